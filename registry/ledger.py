"""The append-only ledger: who did what to which model version, when, from where, and why.

MLflow keeps no history of aliases, so "who moved ``production``, from which version, in which
pipeline, and why" lives here, as does every register, gate result, deploy and smoke test.
Rows are only ever inserted: there is no update or delete path in this module, and the
database itself rejects UPDATE/DELETE (triggers created by the first migration).

The schema is created and versioned with Alembic (``registry/migrations``) on first use, with
its own version table, so the ledger may share a PostgreSQL database with MLflow. SQLite
(default: its own file next to the local MLflow database, never MLflow's file itself) and
PostgreSQL are supported.

``Ledger.serialized(model)`` is the promotion lock, held across commits (a lock file beside a
SQLite database; a session-level advisory lock per model on PostgreSQL, ``pg_try_advisory_lock`` polled), around "read
current production -> commit an intent row -> move alias -> append the outcome row", so racing
promotions never lose a row and the alias always ends where the ledger says. Both kinds of lock
die with the process that holds them, so a SIGKILLed promotion blocks no one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import sqlalchemy as sa

from mlops_common import filelock, log, settings, strict_json
from mlops_common.errors import ConfigError, ConnectionFailure, RefusedError

ACTIONS = ("register", "gate", "promote", "rollback", "deploy", "smoke_test", "host_rollback", "intent",
           "lock_takeover", "canary")
OUTCOMES = ("ok", "passed", "failed", "refused", "rolled_back", "pending")
VERSION_TABLE = "ledger_alembic_version"
CREATED_MS = "created_ms"    # a register row's detail: when MLflow created the version (ms, the server's clock)
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_S = 120  # how long a writer waits for the lock before giving up
LOCK_WAIT_S = float(SQLITE_BUSY_TIMEOUT_S)   # the same bound for PostgreSQL's advisory locks
PG_CONNECT_TIMEOUT_S = 10    # reaching the PostgreSQL server (as mlops.mlflow_db's check of MLflow's)

_metadata = sa.MetaData()
entries_table = sa.Table(
    "ledger_entries", _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("model", sa.String(256), nullable=False),
    sa.Column("from_version", sa.Integer),
    sa.Column("to_version", sa.Integer),
    sa.Column("actor", sa.String(256)),
    sa.Column("pipeline_id", sa.String(128)),
    sa.Column("workflow_id", sa.String(128)),
    sa.Column("host", sa.String(256)),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("details", sa.Text),
)


@dataclass(frozen=True)
class Entry:
    """One ledger row. ``id`` and ``at`` are filled in when it is appended."""

    action: str
    model: str
    outcome: str
    from_version: int | None = None
    to_version: int | None = None
    actor: str | None = None
    pipeline_id: str | None = None
    workflow_id: str | None = None
    host: str | None = None
    reason: str | None = None
    details: dict = field(default_factory=dict)
    id: int | None = None
    at: datetime | None = None

    def __post_init__(self):
        # a row read back (it has an id) is shown as written: a newer mlops sharing the ledger
        # adds actions and outcomes (``canary`` and ``lock_takeover`` came so), and an older
        # one's every read of such a row was a traceback (`registry history`)
        if self.id is not None:
            return
        if self.action not in ACTIONS:
            raise ValueError(f"unknown ledger action {self.action!r}; expected one of {ACTIONS}")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown ledger outcome {self.outcome!r}; expected one of {OUTCOMES}")
        if not self.model:
            raise ValueError("a ledger entry needs a model name")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["at"] = self.at.isoformat() if self.at else None
        return d


def _to_row(entry: Entry) -> dict:
    values = {f.name: getattr(entry, f.name) for f in fields(entry) if f.name != "id"}   # no deep copy
    row = {k: v for k, v in values.items() if k != "details"}
    # strict: a NaN / infinity as null, so PostgreSQL's ``details::json`` and jq read every row
    row["details"] = strict_json.dumps(entry.details, sort_keys=True, default=str) if entry.details else None
    if _holds_secret(list(values.values()), settings.secret_values()):
        raise RefusedError(f"refusing to write a '{entry.action}' ledger row for '{entry.model}': it "
                           f"contains the value of a secret environment variable")
    for name, value in row.items():
        try:
            value.encode("utf-8") if isinstance(value, str) else None
        except UnicodeEncodeError:  # not UTF-8 bytes (an environment variable, argv): the driver's traceback
            raise RefusedError(f"refusing to write a '{entry.action}' ledger row for "
                               f"'{log.printable(entry.model)}': its {name} is "
                               f"not UTF-8 text (bytes of another encoding); nothing was recorded") from None
    return row


def _holds_secret(value, secrets: list[str], depth: int = 0) -> bool:
    """Whether any raw string in ``value`` (dict keys and values, lists, nested) contains a secret.

    Raw, not JSON-escaped: a secret with quotes, backslashes or non-ASCII characters is escaped
    differently in the stored text, and would slip past a check of that text.
    """
    if not secrets or value is None:
        return False
    if depth > 50:                      # bounded: deeper levels are checked as their JSON text
        return _holds_secret(json.dumps(value, default=str), secrets)
    if isinstance(value, dict):
        return any(_holds_secret(k, secrets, depth + 1) or _holds_secret(v, secrets, depth + 1)
                   for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_holds_secret(v, secrets, depth + 1) for v in value)
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return any(secret in text for secret in secrets)


def _from_row(row) -> Entry:
    m = dict(row._mapping)
    at = m["at"]
    if at is not None and at.tzinfo is None:  # SQLite returns naive datetimes; we store UTC
        at = at.replace(tzinfo=timezone.utc)
    elif at is not None:    # PostgreSQL: in the session's time zone (the server's); shown labelled UTC
        at = at.astimezone(timezone.utc)
    m["at"] = at
    m["details"] = json.loads(m["details"]) if m["details"] else {}
    return Entry(**m)


def safe_url(url: str, unparseable: str = "<unparseable MLOPS_LEDGER_URL>") -> str:
    """A database URL (the ledger's, MLflow's backend store) with any password masked, for
    messages and logs; ``unparseable`` when SQLAlchemy cannot read it."""
    import re

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
def _promotion_session(engine: sa.Engine, url: str, model: str) -> Iterator[sa.Connection]:
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
_sqlite_writers_lock = threading.Lock()      # not _engines_lock: _engine_for holds it to migrate


@contextlib.contextmanager
def _write_transaction(engine: sa.Engine, lock_model: str) -> Iterator[sa.Connection]:
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
    with _write_transaction(engine, "__schema__") as conn:
        # again under the lock: a newer release's mlops may have migrated while this one waited
        if known(conn) == head:
            return
        cfg.attributes["connection"] = conn
        try:
            command.upgrade(cfg, "head")
        except CommandError as exc:  # pragma: no cover - guarded above
            raise ConfigError(f"cannot migrate the ledger at {safe_url(url)}: {exc}") from None


@contextlib.contextmanager
def _db_errors(url: str, what: str):
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


def _engine_for(url: str) -> sa.Engine:
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _create_engine(url)
            try:
                with _db_errors(url, "cannot open the ledger database"):
                    _refuse_mlflow_sqlite(engine, url)
                    _migrate(engine, url)
            except BaseException:
                engine.dispose()
                raise
            _engines[url] = engine
        return engine


class Ledger:
    """Append and read ledger rows. ``Ledger()`` uses ``MLOPS_LEDGER_URL`` or the local SQLite file."""

    def __init__(self, url: str | None = None):
        self.url = url or settings.ledger_url()
        self._engine = _engine_for(self.url)

    # -- writing ---------------------------------------------------------------------------
    def append(self, entry: Entry) -> Entry:
        """Insert one row in its own transaction; returns it with ``id`` and ``at`` set."""
        return self.append_all([entry])[0]

    def append_all(self, entries: list[Entry]) -> list[Entry]:
        """Insert rows of one model in ONE transaction, in order: all of them or none. A fleet's
        wave records its hosts this way: one commit (one fsync on SQLite, one lock and commit
        round trip on PostgreSQL) per wave instead of one per host."""
        entries = list(entries)
        if not entries:
            return []
        models = {e.model for e in entries}
        if len(models) != 1:
            raise ValueError(f"append_all writes the rows of one model, got {sorted(models)}")
        with _db_errors(self.url, "cannot write to the ledger database"):
            with _write_transaction(self._engine, entries[0].model) as conn:
                return [_insert(conn, e) for e in entries]

    def record(self, action: str, model: str, *, outcome: str, **fields) -> Entry:
        """Shorthand for ``append(Entry(action, model, outcome, **fields))``."""
        return self.append(Entry(action=action, model=model, outcome=outcome, **fields))

    @contextlib.contextmanager
    def serialized(self, model: str) -> Iterator["LockedLedger"]:
        """Hold ``model``'s promotion lock for the block; rows appended inside commit at its end,
        or earlier at ``LockedLedger.commit()`` (the lock stays held).

        If the block raises, nothing it appended since the last commit is kept.
        """
        what = "the promotion transaction failed (or waited too long for the lock) on"
        with _db_errors(self.url, what):
            with _promotion_session(self._engine, self.url, model) as conn:
                try:
                    yield LockedLedger(conn, model)
                except BaseException:
                    conn.rollback()
                    raise
                conn.commit()

    # -- reading ---------------------------------------------------------------------------
    def entries(self, model: str | None = None, *, actions: tuple[str, ...] | None = None,
                limit: int | None = None, current: bool = False, version: int | None = None,
                to_version: int | None = None, since: MoveCut | None = None) -> list[Entry]:
        """Rows in the order they were appended (oldest first); ``limit`` keeps the newest N;
        ``current``: only the rows of the model as it exists now (``_select``), for decisions;
        ``version``: only the rows about that version (its ``from_version`` or ``to_version``),
        picked by the database: a version's description read every row of a ledger of years;
        ``to_version``: only the rows whose ``to_version`` it is; ``since`` (with ``model``): only
        the rows from the model's newest move that ``MoveCut`` names on, that move included."""
        with _db_errors(self.url, "cannot read the ledger database"):
            with self._engine.connect() as conn:
                return _select(conn, model, actions, limit, current=current, version=version,
                               to_version=to_version, since=since)


class LockedLedger:
    """The ledger as seen inside ``Ledger.serialized``: reads and appends in the locked transaction."""

    def __init__(self, conn: sa.Connection, model: str):
        self._conn, self.model = conn, model

    def append(self, entry: Entry) -> Entry:
        if entry.model != self.model:
            raise ValueError(f"this transaction holds the lock of '{self.model}', not '{entry.model}'")
        return _insert(self._conn, entry)

    def entries(self, *, actions: tuple[str, ...] | None = None, limit: int | None = None) -> list[Entry]:
        """The rows of the model as it exists now (every read here is for a decision)."""
        return _select(self._conn, self.model, actions, limit, current=True)

    def commit(self) -> None:
        """Make the rows appended so far durable now, keeping the lock (an intent row must
        survive a crash of the call that follows it)."""
        self._conn.commit()


def _insert(conn: sa.Connection, entry: Entry) -> Entry:
    entry = replace(entry, at=datetime.now(timezone.utc))
    result = conn.execute(entries_table.insert().values(**_to_row(entry)))
    return replace(entry, id=int(result.inserted_primary_key[0]))


def _created_ms(details: str | None) -> int | None:
    try:
        ms = json.loads(details or "{}").get(CREATED_MS)
    except (ValueError, AttributeError):
        return None
    return ms if isinstance(ms, int) else None


def _current_start(conn: sa.Connection, model: str) -> int | None:
    """The id of the first row of ``model`` as it exists now: its latest ``register`` row of
    version 1, or an earlier ``register`` row (after the previous one of version 1) of a version
    MLflow created after that v1 (``CREATED_MS``, the server's clock): two first trainings at once
    get v1 and v2, and v2's row may be written first; a cut at v1's row hid it, and any gate of v2
    written before v1's row. None: no registration of version 1 recorded (every row counts)."""
    t = entries_table
    registered = sa.select(t.c.id, t.c.details).where(t.c.model == model, t.c.action == "register",
                                                       t.c.outcome == "ok")
    # the two latest of version 1, then the registrations between them: not every register row
    # of the model (with its JSON of file hashes) at every read
    firsts = conn.execute(registered.where(t.c.to_version == 1).order_by(t.c.id.desc()).limit(2)).all()
    if not firsts:
        return None
    start, since = firsts[0].id, _created_ms(firsts[0].details)
    if since is None:         # a row from before versions' creation times were recorded
        return start
    floor = firsts[1].id if len(firsts) > 1 else 0
    between = conn.execute(registered.where(t.c.id > floor, t.c.id < start)).all()
    return min([start, *(r.id for r in between if (ms := _created_ms(r.details)) is not None and ms >= since)])


@dataclass(frozen=True)
class MoveCut:
    """Where a read of the model's rows starts (``Ledger.entries(since=...)``): at its newest ``ok``
    move of ``production`` (promote or rollback) — to ``to_version`` only, or (``changed``) one that
    changed where production is (``promotion_rules.moved``: ``from_version`` is not ``to_version``).
    ``none``: what is read when there is no such move, ``"all"`` the rows or ``"nothing"``.

    The database finds that move by walking the model's ``(model, id)`` index from its newest end
    and stops there: a decision about the latest move reads the rows since it, not every deploy of
    a ledger of years (a ``sync watch`` asks at every pass)."""

    to_version: int | None = None
    changed: bool = False
    none: str = "all"


def _cut(conn: sa.Connection, model: str, start: int | None, since: MoveCut) -> int | None:
    """The id of the newest move ``since`` names (from ``start`` on), or None."""
    t = entries_table
    q = sa.select(t.c.id).where(t.c.model == model, t.c.action.in_(("promote", "rollback")), t.c.outcome == "ok")
    if start is not None:
        q = q.where(t.c.id >= start)
    if since.to_version is not None:
        q = q.where(t.c.to_version == since.to_version)
    if since.changed:
        q = q.where(t.c.from_version.is_distinct_from(t.c.to_version))
    return conn.execute(q.order_by(t.c.id.desc()).limit(1)).scalar()


def _select(conn: sa.Connection, model: str | None, actions, limit: int | None, *,
            current: bool = False, version: int | None = None, to_version: int | None = None,
            since: MoveCut | None = None) -> list[Entry]:
    """``current`` (with ``model``): from the model's latest registration of version 1 on
    (``_current_start``). MLflow numbers a registered model deleted and created again from 1, and
    the rows of the model that was deleted (its productions, gates, deploys) are about other
    versions of the same numbers: a rollback went to a version that never held production, a
    stale gate passed."""
    t = entries_table
    q = sa.select(t)
    if model:
        q = q.where(t.c.model == model)
        start = _current_start(conn, model) if current else None
        if since is not None:
            cut = _cut(conn, model, start, since)
            if cut is None and since.none == "nothing":
                return []
            start = start if cut is None else cut
        if start is not None:
            q = q.where(t.c.id >= start)
    if actions:
        q = q.where(t.c.action.in_(actions))
    if version is not None:
        q = q.where(sa.or_(t.c.to_version == version, t.c.from_version == version))
    if to_version is not None:
        q = q.where(t.c.to_version == to_version)
    q = q.order_by(t.c.id.desc())
    if limit:
        q = q.limit(limit)
    return [_from_row(r) for r in reversed(conn.execute(q).all())]
