"""MLflow's backend database: bring its schema up to date before a tracking server starts on it.

Why: an ``mlflow server`` of a newer MLflow on a database written by an older one does not
reliably migrate it. MLflow 3.17 re-runs its "fresh install" path (create tables + upgrade)
only when one of its tables is missing; when every table exists but a column-only migration is
pending it exits with "Detected out-of-date database schema"; and on a database written by a
*newer* MLflow it prints the same advice to run ``mlflow db upgrade``, which cannot work.
So before a server starts we read the database's revision ourselves and:

- a missing SQLite file: ``prepare_backend_store`` creates it whole first (``create_sqlite``);
- no MLflow schema yet (empty database): nothing to do, the server creates its tables;
- at this MLflow's newest revision: nothing to do;
- behind: run ``mlflow db upgrade`` (bounded in time; the URI in its environment, not its argv) and log it;
  on SQLite on a copy beside the file, renamed into place once whole (``_upgrade_sqlite_copy``);
- at a revision this MLflow does not know: refuse with one line saying to upgrade MLflow.

The decision (:func:`plan`) is a plain function on plain data; reading the revision and running
the upgrade are the I/O edges. MLflow and Alembic are imported only when a database exists.
Passwords never appear in messages or logs (URLs are printed with the password masked); a
PostgreSQL password can stay out of the URI altogether with libpq's ``PGPASSWORD``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mlops_common import log
from mlops_common.errors import ConfigError, ConnectionFailure, UserError, reworded

_log = log.get("mlflow_db")

UPGRADE_TIMEOUT_S = 600.0   # bound on `mlflow db upgrade`; large databases may need more
CONNECT_TIMEOUT_S = 10      # bound on reaching the database server
PG_DRIVER = "postgresql+psycopg2"   # the pinned driver (psycopg2-binary); SQLAlchemy 2.1
                                    # would pick psycopg 3 for a bare postgresql://

# plan() results
FRESH, CURRENT, UPGRADE, NEWER = "fresh", "current", "upgrade", "newer"


@dataclass(frozen=True)
class SchemaState:
    """Where a database's MLflow schema stands relative to the installed MLflow."""

    current: str | None          # MLflow's Alembic revision in the database; None = no MLflow schema
    head: str                    # newest revision the installed MLflow knows
    known: frozenset[str]        # every revision the installed MLflow knows


@dataclass(frozen=True)
class SchemaCheck:
    """What :func:`ensure_schema_current` found and did."""

    uri: str                     # the (normalised) backend store URI, password included
    action: str                  # fresh | current | upgraded | not-a-database
    before: str | None           # revision found
    after: str | None            # revision now
    seconds: float = 0.0         # time spent upgrading


def plan(state: SchemaState) -> str:
    """``fresh`` / ``current`` / ``upgrade`` / ``newer`` for a schema state (no I/O)."""
    if state.current is None:
        return FRESH
    if state.current == state.head:
        return CURRENT
    if state.current in state.known:
        return UPGRADE
    return NEWER


def normalize_backend_uri(uri: str) -> str:
    """``postgresql://`` / ``postgres://`` -> ``postgresql+psycopg2://`` (the installed driver).

    With SQLAlchemy 2.1 a bare ``postgresql://`` means psycopg 3, which is not installed, and
    ``mlflow server`` would die with "No module named 'psycopg'".
    """
    for prefix in ("postgresql://", "postgres://"):
        if uri.startswith(prefix):
            return PG_DRIVER + "://" + uri[len(prefix):]
    return uri


def safe_uri(uri: str) -> str:
    """The URI with any password masked, for messages and logs (the ledger's rule: a password
    holding '@' is masked to the last one)."""
    from registry.ledger_db import safe_url

    return safe_url(uri, uri.split("://", 1)[0] + "://..." if "://" in uri else "<backend store URI>")


def _is_database_uri(uri: str) -> bool:
    return uri.split(":", 1)[0].split("+", 1)[0] in ("sqlite", "postgresql", "mysql", "mssql")


def _sqlite_path(uri: str) -> Path | None:
    import sqlalchemy as sa

    url = sa.engine.make_url(uri)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database).expanduser()


def mlflow_revisions() -> tuple[str, frozenset[str]]:
    """(head, every known revision) of the installed MLflow's migrations."""
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    script = ScriptDirectory.from_config(_get_alembic_config(""))
    heads = script.get_heads()
    if len(heads) != 1:  # pragma: no cover - a broken MLflow install
        raise ConfigError(f"the installed MLflow has {len(heads)} migration heads ({heads}); reinstall it")
    return heads[0], frozenset(s.revision for s in script.walk_revisions())


def current_revision(uri: str, *, env: dict[str, str] | None = None) -> str | None:
    """MLflow's revision in the database at ``uri`` (None: no MLflow schema, or no database yet).

    A missing SQLite file is not created. ``env`` is the environment the server will run with:
    its ``PGPASSWORD`` is used when the URI carries no password.
    """
    import sqlalchemy as sa
    from alembic.runtime.migration import MigrationContext

    uri = normalize_backend_uri(uri)
    path = _sqlite_path(uri)
    if path is not None and not path.exists():
        return None
    url = sa.engine.make_url(uri)
    connect_args: dict = {}
    if url.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
        password = (env if env is not None else os.environ).get("PGPASSWORD")
        if url.password is None and password:
            connect_args["password"] = password
    engine = sa.create_engine(url, connect_args=connect_args, poolclass=sa.pool.NullPool)
    safe = safe_uri(uri)
    try:
        with engine.connect() as conn:
            if "alembic_version" not in sa.inspect(conn).get_table_names():
                return None
            return MigrationContext.configure(conn).get_current_revision()
    except sa.exc.DBAPIError as exc:
        first = (str(exc.orig).strip().splitlines() or [type(exc.orig).__name__])[0]
        if path is not None:
            raise ConfigError(f"the MLflow database {path} cannot be read ({first}); restore it from a "
                              f"backup or point the server at another backend store") from None
        raise ConnectionFailure(f"cannot open the MLflow database {safe}: {first}; check that the database "
                                f"server is running and the backend store URI (host, port, user, "
                                f"database, password or PGPASSWORD)") from None
    except sa.exc.ArgumentError:
        raise ConfigError(f"the backend store URI {safe} is not a valid database URL") from None
    finally:
        engine.dispose()


UPGRADE_URI_VAR = "MLOPS_MLFLOW_DB_UPGRADE_URI"
# `mlflow db upgrade URL` takes the URL only as an argument, and argv is readable by every user
# (/proc/<pid>/cmdline): the URL (password included) travels in the environment instead.
_UPGRADE_SCRIPT = ("import os, sys; from mlflow.cli import cli; "
                   f"sys.argv = ['mlflow', 'db', 'upgrade', os.environ.pop({UPGRADE_URI_VAR!r})]; cli()")


def upgrade_command() -> list[str]:
    """MLflow's own migration command; the URI goes in ``upgrade_env`` (never on the command line)."""
    return [sys.executable, "-c", _UPGRADE_SCRIPT]


def upgrade_env(uri: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of ``upgrade_command`` for ``uri`` (``env`` or ours, plus the URI)."""
    return {**(env if env is not None else os.environ), UPGRADE_URI_VAR: uri}


def _scrub(text: str, uri: str) -> str:
    """Output of the upgrade with the URI's password (and secret variables) removed."""
    import sqlalchemy as sa

    try:
        password = sa.engine.make_url(uri).password
    except Exception:  # noqa: BLE001
        password = None
    if password:
        text = text.replace(str(password), "***")
    return log.redact(text)


def failure_reason(output: str) -> str:
    """The line of a failed command's output that says why: the last exception line, else the last
    line that is not SQLAlchemy's "[SQL: ...]" / "(Background on this error ...)" trailer."""
    lines = [ln.strip() for ln in output.strip().splitlines() if ln.strip()]
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if head.endswith(("Error", "Exception")) and "." in head and " " not in head:
            return line[:500]
    for line in reversed(lines):
        if not line.startswith(("(Background on this error", "[SQL:", "[parameters:")):
            return line[:500]
    return "no output"


def run_upgrade(uri: str, *, env: dict[str, str] | None = None, timeout: float = UPGRADE_TIMEOUT_S) -> float:
    """Run ``mlflow db upgrade`` on ``uri`` within ``timeout`` seconds; returns the time it took."""
    uri = normalize_backend_uri(uri)
    safe = safe_uri(uri)
    started = time.monotonic()
    try:
        proc = subprocess.run(upgrade_command(), env=upgrade_env(uri, env), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ConnectionFailure(f"`mlflow db upgrade` on {safe} did not finish within {timeout:.0f}s (is "
                                f"another process holding the database?); take a backup and run "
                                f"`mlflow db upgrade <backend store URI>` by hand, then start the "
                                f"server again") from None
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise ConfigError(f"`mlflow db upgrade` on {safe} failed (exit {proc.returncode}): "
                          f"{failure_reason(_scrub(proc.stderr or proc.stdout, uri))}; restore the database "
                          f"from its backup or fix the cause, then start the server again")
    return seconds


_CREATE_SCRIPT = ("import os; import sqlalchemy as sa; from mlflow.store.db.utils import _initialize_tables; "
                  f"e = sa.create_engine(os.environ.pop({UPGRADE_URI_VAR!r})); _initialize_tables(e); e.dispose()")


def create_sqlite(path: Path, *, env: dict[str, str] | None = None, timeout: float = UPGRADE_TIMEOUT_S) -> None:
    """A new SQLite database at ``path`` with MLflow's whole schema, there whole or not at all: made
    beside it and renamed into place. The server made it in place, one migration after another, so
    a first start stopped midway (its health timeout on a slow machine, a Ctrl-C: about 15 s of
    migrations) left a database no `mlflow db upgrade` could finish ("duplicate column name").

    The schema is made once per (MLflow version, head revision) in the cache folder
    (``settings.cache_dir``, ``MLOPS_CACHE_DIR``), the same way, and copied from there: a copy
    beside ``path``, its revision checked, renamed into place. Made directly where the cache
    cannot be written. The template holds the schema only (``_initialize_tables``: MLflow's
    default experiment, with its artifact location, is written by the server's store, not here)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the MLflow database {path} ({exc.strerror or exc}); point MLOPS_HOME "
                          f"at a folder you can write") from None
    template = _template(env=env, timeout=timeout)
    if template is not None and _copy_whole(template, path):
        return
    _create_whole(path, env=env, timeout=timeout)


def template_path() -> Path:
    """Where the empty database of the installed MLflow (version, head revision) is kept."""
    from importlib import metadata

    from mlops_common import settings

    head, _ = mlflow_revisions()
    version = "".join(c if c.isalnum() or c in ".-_" else "_" for c in metadata.version("mlflow"))
    return settings.cache_dir() / f"mlflow-{version}-{head}.db"


def _template(*, env: dict[str, str] | None, timeout: float) -> Path | None:
    """The cached empty database, made first when missing; None when the cache cannot be written."""
    template = template_path()
    if template.is_file():
        return template if _trusted(template) else None
    try:
        template.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _trusted(template.parent):
            return None
        _create_whole(template, env=env, timeout=timeout)
    except (OSError, ConfigError) as exc:
        _log.info("MLflow database template %s cannot be made (%s); creating the database directly",
                  template, getattr(exc, "message", None) or getattr(exc, "strerror", None) or exc)
        return None
    return template


def _trusted(path: Path) -> bool:
    """``path`` (the template or its folder, and the folder of a template) is written only by this
    user or root: every new database is a copy of the template, so one planted in a cache folder
    others may write (MLOPS_CACHE_DIR on a shared folder) would be every new server's database."""
    for p in ((path,) if path.is_dir() else (path, path.parent)):
        st = p.stat()
        if st.st_uid not in (os.getuid(), 0) or st.st_mode & 0o002:
            _log.warning("MLflow database template folder %s may be written by other users; not using it "
                         "(set MLOPS_CACHE_DIR to a folder only you can write)", p)
            return False
    return True


def _copy_whole(template: Path, path: Path) -> bool:
    """``template`` copied to ``path`` whole (beside it, then renamed) when the copy is at the installed
    MLflow's head revision; False (nothing at ``path``) when it is not or cannot be read."""
    import shutil

    from mlops_common import settings

    tmp = path.with_name(f".{path.name}.{os.getpid()}.copying")
    try:
        shutil.copyfile(template, tmp)
        head, _ = mlflow_revisions()
        try:
            found = current_revision(settings.sqlite_url(tmp))
        except ConfigError:         # not a database (a cache folder damaged): as if at no revision
            found = None
        if found != head:
            _log.warning("MLflow database template %s is not at revision %s; removing it and creating the "
                         "database directly", template, head)
            template.unlink(missing_ok=True)
            return False
        os.replace(tmp, path)
        return True
    except OSError as exc:
        _log.info("MLflow database template %s cannot be copied (%s); creating the database directly",
                  template, exc.strerror or exc)
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _create_whole(path: Path, *, env: dict[str, str] | None, timeout: float) -> None:
    """MLflow's schema made in a subprocess beside ``path`` and renamed into place."""
    from mlops_common import settings

    tmp = path.with_name(f".{path.name}.{os.getpid()}.creating")
    try:
        tmp.unlink(missing_ok=True)
        proc = subprocess.run([sys.executable, "-c", _CREATE_SCRIPT], env=upgrade_env(settings.sqlite_url(tmp), env),
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise ConfigError(f"creating the MLflow database {path} failed (exit {proc.returncode}): "
                              f"{failure_reason(log.redact(proc.stderr or proc.stdout))}")
        os.replace(tmp, path)
    except subprocess.TimeoutExpired:
        raise ConnectionFailure(f"creating the MLflow database {path} did not finish within {timeout:.0f}s") from None
    except OSError as exc:
        raise ConfigError(f"cannot create the MLflow database {path} ({exc.strerror or exc}); point MLOPS_HOME "
                          f"at a folder you can write") from None
    finally:
        tmp.unlink(missing_ok=True)


def _upgrade_sqlite_copy(path: Path, *, env: dict[str, str] | None, timeout: float) -> tuple[float, str | None]:
    """``mlflow db upgrade`` on a copy of the SQLite database at ``path`` (made beside it with SQLite's
    backup API), renamed into place only once the copy's revision is read; (seconds, revision).
    In place, an upgrade stopped midway (a Ctrl-C, the timeout) left a half-migrated database: the
    original is now untouched until the copy is whole."""
    import sqlite3

    from mlops_common import settings

    tmp = path.with_name(f".{path.name}.{os.getpid()}.upgrading")
    try:
        tmp.unlink(missing_ok=True)
        src, dst = sqlite3.connect(path), sqlite3.connect(tmp)
        try:
            src.backup(dst)
        finally:
            dst.close()
            src.close()
        try:
            seconds = run_upgrade(settings.sqlite_url(tmp), env=env, timeout=timeout)
        except UserError as exc:    # it names the copy: say the database itself is as it was
            raise reworded(exc, f"{exc.message} ({path} itself is unchanged: the upgrade ran on a copy)") from None
        after = current_revision(settings.sqlite_url(tmp), env=env)
        if after == mlflow_revisions()[0]:
            os.replace(tmp, path)
        return seconds, after
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(f"cannot copy the MLflow database {path} to upgrade it ({exc}); free some space or "
                          f"point MLOPS_HOME at a folder you can write") from None
    finally:
        tmp.unlink(missing_ok=True)


def ensure_schema_current(backend_uri: str, *, env: dict[str, str] | None = None,
                          timeout: float = UPGRADE_TIMEOUT_S) -> SchemaCheck:
    """Make the MLflow schema at ``backend_uri`` current before a server starts on it (see module doc).

    Raises ConfigError (database written by a newer MLflow, unreadable file, failed upgrade) or
    ConnectionFailure (database server unreachable, upgrade timed out), each one line.
    """
    uri = normalize_backend_uri(backend_uri)
    if not _is_database_uri(uri):
        return SchemaCheck(uri, "not-a-database", None, None)
    before = current_revision(uri, env=env)
    if before is None:
        return SchemaCheck(uri, FRESH, None, None)
    head, known = mlflow_revisions()
    action = plan(SchemaState(before, head, known))
    safe = safe_uri(uri)
    if action == CURRENT:
        return SchemaCheck(uri, CURRENT, before, before)
    if action == NEWER:
        import mlflow

        raise ConfigError(f"the MLflow database {safe} is at schema revision {before}, which MLflow "
                          f"{mlflow.__version__} does not know: a newer MLflow wrote it; install that "
                          f"MLflow version here (or newer) instead of downgrading the database")
    _log.info("MLflow database %s: schema revision %s is behind %s; running "
              "`mlflow db upgrade` (take backups before upgrading MLflow)", safe, before, head)
    path = _sqlite_path(uri)
    if path is not None:
        seconds, after = _upgrade_sqlite_copy(path, env=env, timeout=timeout)
    else:
        seconds = run_upgrade(uri, env=env, timeout=timeout)
        after = current_revision(uri, env=env)
    if after != head:
        raise ConfigError(f"`mlflow db upgrade` on {safe} finished but the schema is at {after}, not "
                          f"{head}; check the database and run `mlflow db upgrade` by hand")
    _log.info("MLflow database %s: upgraded %s -> %s in %.1fs", safe, before, after, seconds)
    return SchemaCheck(uri, "upgraded", before, after, seconds)


def prepare_backend_store(backend_uri: str, *, env: dict[str, str] | None = None) -> str:
    """What ``start_mlflow`` calls: normalise the URI, create a missing SQLite database whole
    (``create_sqlite``) and bring its schema up to date; returns it."""
    uri = normalize_backend_uri(backend_uri)
    path = _sqlite_path(uri) if _is_database_uri(uri) else None
    if path is not None and not path.exists():
        create_sqlite(path, env=env)
        _log.info("MLflow database %s: created", path)
    return ensure_schema_current(uri, env=env).uri
