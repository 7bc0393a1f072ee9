"""The ledger's database edge: engines, the SQLite/PostgreSQL locks, write transactions, migrations.

``registry.ledger`` (the rows and the ``Ledger`` API) runs every query through this module: an
engine per URL, migrated on first use (``registry/migrations``, Alembic, its own version table);
a writer's transaction (``BEGIN IMMEDIATE`` on SQLite, a per-model advisory lock on PostgreSQL);
the promotion lock held across commits (a lock file beside a SQLite database, a session-level
advisory lock on PostgreSQL); database failures as one line.
"""
from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import sqlalchemy as sa

from mlops_common import filelock, settings
from mlops_common.errors import ConfigError, ConnectionFailure

VERSION_TABLE = "ledger_alembic_version"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_S = 120  # how long a writer waits for the lock before giving up
LOCK_WAIT_S = float(SQLITE_BUSY_TIMEOUT_S)   # the same bound for PostgreSQL's advisory locks
PG_CONNECT_TIMEOUT_S = 10    # reaching the PostgreSQL server (as mlops.mlflow_db's check of MLflow's)


def safe_url(url: str, unparseable: str = "<unparseable MLOPS_LEDGER_URL>") -> str:
    """A database URL (the ledger's, MLflow's backend store) with any password masked, for
    messages and logs; ``unparseable`` when SQLAlchemy cannot read it."""
    try:
        # masked to the last '@': SQLAlchemy cuts a password holding '@' at the first one
        text = settings.mask_url_password(sa.engine.make_url(url).render_as_string(hide_password=False))
    except (sa.exc.ArgumentError, ValueError):
        return unparseable
    # libpq takes the password as a query parameter too (postgresql://u@host/db?password=...)
    return re.sub(r"([?&]password=)[^&]*", r"\1***", text, flags=re.IGNORECASE)


def _lock_key(model: str) -> int:
    """A stable signed 64-bit key for the advisory locks (one lock per model)."""
    return int.from_bytes(hashlib.sha256(f"mlops-ledger:{model}".encode()).digest()[:8], "big",
                          signed=True)


def _create_engine(url: str) -> sa.Engine:
    try:
        parsed = sa.engine.make_url(url)
        parsed.port         # noqa: B018 - a port that is not a number raises here, not at the first query
    except (sa.exc.ArgumentError, ValueError):
        raise ConfigError("MLOPS_LEDGER_URL is not a valid SQLAlchemy URL (e.g. "
                          "sqlite:////abs/path/ledger.db or postgresql://user@host:5432/db)") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            from mlops_common.settings import make_folder

            make_folder(Path(parsed.database).expanduser().parent, "the ledger (MLOPS_LEDGER_URL)")
        try:
            engine = sa.create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
        except sa.exc.ArgumentError:
            raise ConfigError("MLOPS_LEDGER_URL is not a valid SQLite URL (e.g. sqlite:////abs/path/ledger.db; "
                              "a SQLite URL has no user, password or host)") from None

        # SQLAlchemy's documented recipe: take transaction control away from pysqlite so we
        # can BEGIN IMMEDIATE (take the write lock up front) for writers.
        @sa.event.listens_for(engine, "connect")
        def _connect(dbapi_conn, _record):
            dbapi_conn.isolation_level = None

        @sa.event.listens_for(engine, "begin")
        def _begin(conn):
            options = conn.get_execution_options()
            if options.get("ledger_write", False):
                _begin_immediate(conn, options.get("ledger_deadline"))
            else:
                conn.exec_driver_sql("BEGIN")

        return engine
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            # SQLAlchemy 2.1 defaults to psycopg 3; the pinned driver is psycopg2(-binary).
            parsed = parsed.set(drivername="postgresql+psycopg2")
        # bounded: a server that accepts and never answers (an SSH tunnel whose far end is gone)
        # hung every command that reads the ledger, Ctrl-C unseen; a URL's own connect_timeout wins
        connect_args = {} if "connect_timeout" in parsed.query else {"connect_timeout": PG_CONNECT_TIMEOUT_S}
        try:
            return sa.create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
        except (ImportError, sa.exc.NoSuchModuleError):
            if parsed.drivername == "postgresql+psycopg2":     # postgresql:// itself: "use postgresql://" was no help
                raise ConfigError("psycopg2, the driver of MLOPS_LEDGER_URL's postgresql:// URLs, is not installed "
                                  "in this Python: install tfmodel-delivery's requirements (psycopg2-binary)") from None
            raise ConfigError(f"MLOPS_LEDGER_URL names the driver '{parsed.drivername}', which is not "
                              f"installed; use postgresql:// (psycopg2)") from None
    raise ConfigError(f"MLOPS_LEDGER_URL uses '{backend}'; the ledger supports sqlite:// and "
                      f"postgresql:// URLs")


SQLITE_BUSY_SLICE_MS = 100     # a writer waits in SQLite's busy handler this long at a time


def _begin_immediate(conn: sa.Connection, deadline: float | None) -> None:
    """``BEGIN IMMEDIATE``, waiting for another writer until ``deadline`` (monotonic; default
    ``SQLITE_BUSY_TIMEOUT_S`` from now) in slices of ``SQLITE_BUSY_SLICE_MS``. SQLite's busy
    handler sleeps in C, where Python runs no signal handler: a wait of the whole timeout there
    ignored Ctrl-C and SIGTERM for two minutes. Between slices they are seen."""
    import sqlite3

    raw = conn.connection.dbapi_connection
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S if deadline is None else deadline
    raw.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_SLICE_MS}")
    try:
        while time.monotonic() < deadline:
            try:
                raw.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", sqlite3.SQLITE_BUSY) != sqlite3.SQLITE_BUSY or \
                        "locked" not in str(exc):
                    break       # another failure: raised below, as SQLAlchemy words it
        conn.exec_driver_sql("BEGIN IMMEDIATE")     # the last try: "database is locked" past the deadline
    finally:
        raw.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")     # a commit waits for readers


def _lock(conn: sa.Connection, model: str) -> None:
    if conn.dialect.name == "postgresql":
        # bounded like SQLite's busy timeout: a promotion holding the lock forever (its machine
        # gone, the TCP session not yet dropped) must not hang every writer of the model. Tried
        # and slept, as the promotion lock: psycopg2 waits in C for a blocking
        # pg_advisory_xact_lock, where Ctrl-C and SIGTERM went unseen for the whole wait.
        deadline = time.monotonic() + LOCK_WAIT_S
        while not conn.execute(sa.text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _lock_key(model)}).scalar():
            if time.monotonic() > deadline:
                raise ConnectionFailure(f"waited {LOCK_WAIT_S:g}s for the ledger lock of '{model}'; another "
                                        f"promotion holds it (`mlops registry status` shows open intents)")
            time.sleep(0.05)
    # SQLite: BEGIN IMMEDIATE already holds the database write lock.


_local_locks: dict[str, threading.RLock] = {}


@contextlib.contextmanager
def _held(lock, timed_out: Callable[[], Exception]) -> Iterator[None]:
    """``lock`` (an RLock) for the block, waited for at most ``SQLITE_BUSY_TIMEOUT_S``. Released
    on every path on which it was taken: a forced stop (a KeyboardInterrupt) landing just after
    the acquire took it, before any ``try``, left it held, and this process's later writes (the
    rows of the put-back after a forced stop) each waited out the timeout and failed. An RLock
    knows its holder, which a Lock does not: its documented ``release`` raises RuntimeError in a
    thread that does not hold it (the acquire timed out, or the stop came before it took it)."""
    try:
        if not lock.acquire(timeout=SQLITE_BUSY_TIMEOUT_S):
            raise timed_out()
        yield
    finally:
        try:
            lock.release()
        except RuntimeError:      # not held by this thread: nothing to release
            pass


@contextlib.contextmanager
def _sqlite_promotion_lock(engine: sa.Engine, url: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``<database>.lock`` (a process-wide lock for an in-memory
    database), waited for at most ``SQLITE_BUSY_TIMEOUT_S``. The kernel drops it when the holder
    dies, however it dies."""
    def timed_out() -> Exception:
        return ConnectionFailure(f"waited {SQLITE_BUSY_TIMEOUT_S}s for the promotion lock of the ledger "
                                 f"{safe_url(url)}; another promotion holds it")

    database = engine.url.database
    if not database or database == ":memory:":
        with _engines_lock:
            lock = _local_locks.setdefault(url, threading.RLock())
        with _held(lock, timed_out):
            yield
        return
    path = Path(database).expanduser()
    lock = path.with_name(path.name + ".lock")
    try:
        f = open(lock, "a")     # made at the first promotion: a disk full then was a traceback
    except OSError as exc:
        raise ConnectionFailure(f"cannot open the promotion lock file {lock} of the ledger {safe_url(url)} "
                                f"(MLOPS_LEDGER_URL): {exc.strerror}; free space there (or let this user "
                                f"write it) and rerun: nothing was recorded") from None
    with f, filelock.held(f, timeout=SQLITE_BUSY_TIMEOUT_S, poll=0.02, timed_out=timed_out):
        yield


@contextlib.contextmanager
def promotion_session(engine: sa.Engine, url: str, model: str) -> Iterator[sa.Connection]:
    """A write connection that holds ``model``'s promotion lock across its commits."""
    with engine.connect() as conn:
        conn.execution_options(ledger_write=True)
        if conn.dialect.name != "postgresql":
            with _sqlite_promotion_lock(engine, url):
                yield conn
            return
        # try and sleep, not pg_advisory_lock: bounded, and Ctrl-C / SIGTERM work while it waits
        deadline = time.monotonic() + LOCK_WAIT_S
        while not conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": _lock_key(model)}).scalar():
            conn.commit()
            if time.monotonic() > deadline:
                raise ConnectionFailure(f"waited {LOCK_WAIT_S:g}s for the promotion lock of '{model}' in the "
                                        f"ledger {safe_url(url)}; another promotion holds it")
            time.sleep(0.05)
        conn.commit()
        try:
            yield conn
        finally:
            try:
                conn.rollback()
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _lock_key(model)})
                conn.commit()
            except sa.exc.DBAPIError:      # the session is broken: close it, which drops the lock
                conn.invalidate()


_sqlite_writers: dict[str, threading.RLock] = {}
_sqlite_writers_lock = threading.Lock()      # not _engines_lock: engine_for holds it to migrate


@contextlib.contextmanager
def write_transaction(engine: sa.Engine, lock_model: str) -> Iterator[sa.Connection]:
    """One write transaction. SQLite has one writer at a time, and a writer that finds the lock
    taken sleeps in SQLite's busy handler (up to 100 ms a nap): this process's own writers —
    a fleet deploy's host threads — queue on a Python lock instead and go as soon as it is free."""
    if engine.dialect.name != "sqlite":
        with engine.connect() as conn:
            conn.execution_options(ledger_write=True)
            with conn.begin():
                _lock(conn, lock_model)
                yield conn
        return
    # one bound for the queue and the database lock together: host threads that each waited the
    # whole timeout in turn behind a writer of another process failed one after another, minutes apart
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    with _sqlite_writers_lock:
        queue = _sqlite_writers.setdefault(str(engine.url), threading.RLock())

    def timed_out() -> Exception:
        return ConnectionFailure(f"waited {SQLITE_BUSY_TIMEOUT_S}s for the ledger {safe_url(str(engine.url))}: "
                                 f"other writers of this process held it; nothing was recorded")

    with _held(queue, timed_out):
        with engine.connect() as conn:
            conn.execution_options(ledger_write=True, ledger_deadline=deadline)
            with conn.begin():
                yield conn


def script_head() -> str | None:
    """The newest migration revision, read from the scripts' ``revision`` / ``down_revision``
    assignments without importing alembic (a fifth of a second on every command that touches the
    ledger); None when that is not one clear answer (then alembic decides). Tests check it
    against alembic's own answer."""
    import ast

    revisions, parents = set(), set()
    for path in sorted((Path(MIGRATIONS_DIR) / "versions").glob("*.py")):
        found = {}
        for node in ast.parse(path.read_text(), filename=str(path)).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and \
                    isinstance(node.targets[0], ast.Name) and node.targets[0].id in ("revision", "down_revision"):
                try:
                    found[node.targets[0].id] = ast.literal_eval(node.value)
                except ValueError:
                    return None
        if not isinstance(found.get("revision"), str):
            return None
        revisions.add(found["revision"])
        down = found.get("down_revision")
        parents.update(down if isinstance(down, (tuple, list)) else [down] if down else [])
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def _current_revision(engine: sa.Engine) -> str | None:
    """The ledger's schema revision by one plain query (None: no version table yet)."""
    with engine.connect() as conn:
        try:
            rows = conn.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}").all()
        except sa.exc.DBAPIError:
            rows = []
        conn.rollback()
    return rows[0][0] if len(rows) == 1 else None


def _migrate(engine: sa.Engine, url: str) -> None:
    """Bring the schema to the newest revision (no-op when it already is)."""
    head = script_head()
    if head is not None and _current_revision(engine) == head:
        return          # the common case, decided without importing alembic
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from alembic.util.exc import CommandError

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["version_table"] = VERSION_TABLE
    script = ScriptDirectory.from_config(cfg)
    head = script.get_current_head()
    def known(conn: sa.Connection) -> str | None:
        current = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()
        if current is not None and current not in {s.revision for s in script.walk_revisions()}:
            raise ConfigError(f"the ledger at {safe_url(url)} is at schema revision {current}, which this "
                              f"version of tfmodel-delivery does not know (newest: {head}); upgrade it")
        return current

    with engine.connect() as conn:
        try:
            current = known(conn)
        finally:
            conn.rollback()
    if current == head:
        return
    try:
        with write_transaction(engine, "__schema__") as conn:
            # again under the lock: a newer release's mlops may have migrated while this one waited
            if known(conn) == head:
                return
            cfg.attributes["connection"] = conn
            try:
                command.upgrade(cfg, "head")
            except CommandError as exc:  # pragma: no cover - guarded above
                raise ConfigError(f"cannot migrate the ledger at {safe_url(url)}: {exc}") from None
    except sa.exc.DBAPIError as exc:
        if getattr(exc.orig, "pgcode", None) != "42501":     # insufficient_privilege
            raise
        # a role allowed rows but not DDL (least privilege): PostgreSQL's raw "permission denied
        # for schema public" did not say that a migration was due nor who could make it
        raise ConfigError(f"the ledger at {safe_url(url)} needs a schema migration (revision "
                          f"{current or 'none'} -> {head}) and this database role may not change the "
                          f"schema; run it once as the role that owns the schema: MLOPS_LEDGER_URL=<the "
                          f"owner's URL> mlops registry history --limit 1 (any command that reads the "
                          f"ledger migrates it), then retry") from None


@contextlib.contextmanager
def db_errors(url: str, what: str):
    """Database failures (unreachable, locked too long, not a database) as one line."""
    try:
        yield
    except sa.exc.DBAPIError as exc:
        first = str(exc.orig).splitlines()[0] if str(exc.orig) else type(exc.orig).__name__
        raise ConnectionFailure(f"{what} {safe_url(url)} (MLOPS_LEDGER_URL): {first}") from None


def _refuse_mlflow_sqlite(engine: sa.Engine, url: str) -> None:
    """A SQLite ledger must not live in MLflow's own SQLite file.

    A promotion holds SQLite's database-wide write lock while it asks the MLflow server to move
    the alias; if that server wrote to the same file, each would wait for the other until the
    busy timeout. (PostgreSQL is fine: advisory locks do not block MLflow's tables.)
    """
    if engine.dialect.name != "sqlite":
        return
    with engine.connect() as conn:
        names = {r[0] for r in conn.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type='table' AND name IN "
            "('registered_models', 'experiments', 'model_versions')")}
        conn.rollback()
    if names:
        raise ConfigError(f"MLOPS_LEDGER_URL ({safe_url(url)}) is MLflow's own SQLite database; the "
                          f"promotion lock would block the MLflow server. Use a separate file (the "
                          f"default $MLOPS_HOME/ledger.db) or a PostgreSQL database")


_engines: dict[str, sa.Engine] = {}
_engines_lock = threading.Lock()


def engine_for(url: str) -> sa.Engine:
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _create_engine(url)
            try:
                with db_errors(url, "cannot open the ledger database"):
                    _refuse_mlflow_sqlite(engine, url)
                    _migrate(engine, url)
            except BaseException:
                engine.dispose()
                raise
            _engines[url] = engine
        return engine
