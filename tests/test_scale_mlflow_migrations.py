"""MLflow's database schema is brought up to date before a tracking server starts on it.

Real databases (SQLite files, the session PostgreSQL), MLflow's own migrations and its own
``mlflow db upgrade``; the decision itself (``mlops.mlflow_db.plan``) is tested on plain data.
"""
from __future__ import annotations

import contextlib
import json
import logging

import pytest

from mlops import mlflow_db
from mlops.detached_service import spawn, stop_service
from mlops.local_services import mlflow_server_command, mlflow_server_env, start_mlflow
from mlops.ports import free_port, port_in_use
from mlops_common.errors import ConfigError, ConnectionFailure, UserError
from tests.fixtures.mlflow_backends import server_env
from tests.helpers import mlflow_client, run_mlops

KNOWN = frozenset({"a1", "b2", "c3"})
KEPT_EXPERIMENT = "kept-through-upgrade"


# ---- the decision, on plain data ------------------------------------------------------------
@pytest.mark.parametrize("current, expected", [
    (None, mlflow_db.FRESH), ("c3", mlflow_db.CURRENT), ("a1", mlflow_db.UPGRADE), ("b2", mlflow_db.UPGRADE),
    ("zz9", mlflow_db.NEWER)])
def test_plan(current, expected):
    assert mlflow_db.plan(mlflow_db.SchemaState(current, "c3", KNOWN)) == expected


def test_postgres_uris_get_the_installed_driver_and_passwords_are_masked():
    assert mlflow_db.normalize_backend_uri("postgresql://u:pw@h:5432/db") == "postgresql+psycopg2://u:pw@h:5432/db"
    assert mlflow_db.normalize_backend_uri("postgres://u@h/db") == "postgresql+psycopg2://u@h/db"
    for unchanged in ("postgresql+psycopg2://u@h/db", "sqlite:////tmp/x.db", "mysql+pymysql://u@h/db"):
        assert mlflow_db.normalize_backend_uri(unchanged) == unchanged
    assert mlflow_db.safe_uri("postgresql+psycopg2://u:s3cret@h:5432/db") == "postgresql+psycopg2://u:***@h:5432/db"
    assert mlflow_db.safe_uri("postgresql://mlflow:s3cr@tP4ss@db:5432/x") == "postgresql://mlflow:***@db:5432/x"
    assert "u:s3cret" not in " ".join(mlflow_db.upgrade_command())        # the URI goes in the environment
    assert mlflow_db.upgrade_env("sqlite:////x.db", {})[mlflow_db.UPGRADE_URI_VAR] == "sqlite:////x.db"


def test_failure_reason_is_the_exception_line_not_sqlalchemys_trailer():
    output = ("Traceback (most recent call last):\n  File \"x\", line 1\n"
              "psycopg2.errors.DuplicateTable: relation \"t\" already exists\n\n"
              "sqlalchemy.exc.ProgrammingError: (psycopg2.errors.DuplicateTable) relation \"t\" already exists\n"
              "[SQL: CREATE TABLE t ()]\n(Background on this error at: https://sqlalche.me/e/21/f405)\n")
    assert mlflow_db.failure_reason(output) == \
        'sqlalchemy.exc.ProgrammingError: (psycopg2.errors.DuplicateTable) relation "t" already exists'
    assert mlflow_db.failure_reason("something went wrong\n(Background on this error at: x)") == \
        "something went wrong"
    assert mlflow_db.failure_reason("  \n") == "no output"


# ---- helpers on real databases ----------------------------------------------------------------
def make_current_db(uri: str, tmp_path) -> None:
    """A database written by the installed MLflow (its own store creates it), with one experiment."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(mlflow_db.normalize_backend_uri(uri), str(tmp_path / "artifacts"))
    store.create_experiment(KEPT_EXPERIMENT)
    store.engine.dispose()


def downgrade_one_revision(uri: str) -> tuple[str, str]:
    """Take the schema one Alembic revision back with MLflow's own config; returns (head, now)."""
    from alembic import command
    from mlflow.store.db.utils import _get_alembic_config

    head, _ = mlflow_db.mlflow_revisions()
    uri = mlflow_db.normalize_backend_uri(uri)
    command.downgrade(_get_alembic_config(uri), "-1")
    now = mlflow_db.current_revision(uri)
    assert now is not None and now != head
    return head, now


def set_revision(uri: str, revision: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(mlflow_db.normalize_backend_uri(uri))
    with engine.begin() as conn:
        conn.execute(sa.text("update alembic_version set version_num = :r"), {"r": revision})
    engine.dispose()


@contextlib.contextmanager
def mlflow_db_log():
    """Messages logged by mlops.mlflow_db inside the block (whatever the logging setup)."""
    messages: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("mlops.mlflow_db")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def one_line(exc: UserError) -> str:
    assert "\n" not in exc.message
    return exc.message


# ---- fresh and current databases need nothing ---------------------------------------------------
def test_fresh_sqlite_needs_nothing_and_is_not_created(tmp_path):
    path = tmp_path / "state" / "mlflow.db"
    check = mlflow_db.ensure_schema_current(f"sqlite:///{path}")
    assert (check.action, check.before, check.after) == ("fresh", None, None)
    assert not path.exists() and not path.parent.exists()


def test_empty_and_current_postgres_databases_need_nothing(postgres_server, tmp_path):
    url = postgres_server.create_database("fresh")
    assert mlflow_db.ensure_schema_current(url).action == "fresh"
    make_current_db(url, tmp_path)
    head, _ = mlflow_db.mlflow_revisions()
    check = mlflow_db.ensure_schema_current(url)
    assert (check.action, check.before, check.after) == ("current", head, head)
    assert check.uri.startswith("postgresql+psycopg2://")


# ---- one revision behind: upgraded before the server starts --------------------------------------
@pytest.mark.slow   # starts `mlflow server`
def test_postgres_one_revision_behind_is_upgraded_by_start_mlflow(postgres_server, tmp_path):
    """The production shape: 2 workers, password only in PGPASSWORD, bare postgresql:// URI."""
    import sqlalchemy as sa

    url = postgres_server.create_database("behind")
    make_current_db(url, tmp_path)
    head, behind = downgrade_one_revision(url)
    backend = postgres_server.url(url.rsplit("/", 1)[1], password=False)     # no password in argv
    state = tmp_path / "server"
    with mlflow_db_log() as messages:
        svc = start_mlflow(state, port=free_port(), backend_store_uri=backend, workers=2,
                           artifacts_destination=str(tmp_path / "artifacts"),
                           env=server_env(postgres_server.env()))
    try:
        assert mlflow_db.current_revision(url) == head
        safe = mlflow_db.safe_uri(mlflow_db.normalize_backend_uri(backend))
        assert messages[0] == (f"MLflow database {safe}: schema revision {behind} is behind {head}; running "
                               f"`mlflow db upgrade` (take backups before upgrading MLflow)")
        assert messages[1].startswith(f"MLflow database {safe}: upgraded {behind} -> {head} in ")
        server_log = svc.log.read_text()
        # we migrated it, not MLflow's "fresh install" path at start-up
        assert "Creating initial MLflow database tables" not in server_log
        assert postgres_server.password not in server_log
        assert postgres_server.password not in " ".join(messages)
        client = mlflow_client(svc.url)
        assert client.get_experiment_by_name(KEPT_EXPERIMENT) is not None       # data kept
        exp = client.create_experiment("after-upgrade")                          # and it works
        run = client.create_run(exp)
        client.log_param(run.info.run_id, "p", "1")
        client.create_registered_model("upgraded-model")
        assert client.get_run(run.info.run_id).data.params == {"p": "1"}
        engine = sa.create_engine(mlflow_db.normalize_backend_uri(url))
        with engine.connect() as conn:
            assert conn.exec_driver_sql("select count(*) from registered_models").scalar() == 1
        engine.dispose()
    finally:
        stop_service(state, "mlflow-server")


@pytest.mark.slow   # starts `mlflow server`
def test_sqlite_one_revision_behind_is_upgraded_by_mlops_up(tmp_path):
    """The embedded default through the real CLI: `mlops up` on an old state folder."""
    home = tmp_path / "home"
    db = home / "mlflow.db"
    home.mkdir()
    make_current_db(f"sqlite:///{db}", tmp_path)
    head, behind = downgrade_one_revision(f"sqlite:///{db}")
    env = {"MLOPS_HOME": str(home), "MLOPS_MLFLOW_PORT": str(free_port())}
    try:
        r = run_mlops("up", "--json", env=env, timeout=300)
        assert r.returncode == 0, r.stderr
        assert f"schema revision {behind} is behind {head}" in r.stderr
        assert f"upgraded {behind} -> {head}" in r.stderr
        assert mlflow_db.current_revision(f"sqlite:///{db}") == head

        client = mlflow_client(json.loads(r.stdout)["mlflow_ui"])
        assert client.get_experiment_by_name(KEPT_EXPERIMENT) is not None
        assert client.create_experiment("after-upgrade")
    finally:
        run_mlops("down", env=env)


# ---- what MLflow alone does, and our one line, on a database from a newer MLflow ----------------
@pytest.mark.slow   # starts `mlflow server`
def test_database_from_a_newer_mlflow_is_refused_with_one_clear_line(postgres_server, tmp_path):
    url = postgres_server.create_database("newer")
    make_current_db(url, tmp_path)
    set_revision(url, "ffffffffffff")
    backend = mlflow_db.normalize_backend_uri(url)

    # MLflow by itself: exits at start-up, advising `mlflow db upgrade`, which cannot help here
    port = free_port()
    with pytest.raises(ConnectionFailure, match="exited with code 1"):
        spawn("raw-mlflow", mlflow_server_command(port=port, artifacts_destination=str(tmp_path / "a")),
              state=tmp_path / "raw", url=f"http://127.0.0.1:{port}", health_url=f"http://127.0.0.1:{port}/health",
              timeout=180, env=mlflow_server_env(backend))
    assert "Detected out-of-date database schema (found version ffffffffffff" in \
        (tmp_path / "raw" / "raw-mlflow.log").read_text()

    # ours: refused before anything starts, saying what to do
    state = tmp_path / "server"
    port = free_port()
    with pytest.raises(ConfigError) as err:
        start_mlflow(state, port=port, backend_store_uri=url, artifacts_destination=str(tmp_path / "a"))
    line = one_line(err.value)
    assert "schema revision ffffffffffff" in line and "a newer MLflow wrote it" in line
    assert "install that MLflow version" in line and postgres_server.password not in line
    assert not (state / "mlflow-server.json").exists() and not port_in_use(port)
    assert mlflow_db.current_revision(url) == "ffffffffffff"              # untouched


# ---- bad input: one line each, nothing changed --------------------------------------------------
def test_unreachable_server_and_wrong_password(postgres_server):
    closed = free_port()
    with pytest.raises(ConnectionFailure) as err:
        mlflow_db.ensure_schema_current(f"postgresql://mlflow:pw-unused@127.0.0.1:{closed}/mlflow")
    line = one_line(err.value)
    assert line.startswith(f"cannot open the MLflow database postgresql+psycopg2://mlflow:***@127.0.0.1:{closed}/mlflow")
    assert "pw-unused" not in line and "check that the database server is running" in line

    url = postgres_server.create_database("wrongpw")
    wrong = url.replace(f":{postgres_server.password}@", ":not-the-password@")
    with pytest.raises(ConnectionFailure) as err:
        mlflow_db.ensure_schema_current(wrong)
    line = one_line(err.value)
    assert "password authentication failed" in line and "not-the-password" not in line
    # PGPASSWORD (from the server's environment) is used when the URI has no password
    no_pw = postgres_server.url(url.rsplit("/", 1)[1], password=False)
    assert mlflow_db.ensure_schema_current(no_pw, env=postgres_server.env()).action == "fresh"


def test_corrupt_sqlite_file_is_reported_and_left_alone(tmp_path):
    path = tmp_path / "mlflow.db"
    path.write_bytes(b"this is not an SQLite database, it is a stray text file" * 20)
    before = path.read_bytes()
    with pytest.raises(ConfigError) as err:
        mlflow_db.ensure_schema_current(f"sqlite:///{path}")
    line = one_line(err.value)
    assert line.startswith(f"the MLflow database {path} cannot be read (file is not a database)")
    assert path.read_bytes() == before


def test_failed_upgrade_is_reported_and_rolled_back(postgres_server, tmp_path):
    """A migration that breaks half-way: one line with MLflow's reason; PostgreSQL's transactional
    DDL leaves the database at the old revision, as it was."""
    url = postgres_server.create_database("broken")
    make_current_db(url, tmp_path)
    _, behind = downgrade_one_revision(url)
    conn = postgres_server.connect(url.rsplit("/", 1)[1])
    conn.cursor().execute("create table scheduler_leases (x int)")   # the next revision creates it
    conn.close()
    with pytest.raises(ConfigError) as err:
        mlflow_db.ensure_schema_current(url)
    line = one_line(err.value)
    assert line.startswith(f"`mlflow db upgrade` on {mlflow_db.safe_uri(mlflow_db.normalize_backend_uri(url))} "
                           f"failed (exit 1):")
    assert "already exists" in line and "restore the database from its backup" in line
    assert postgres_server.password not in line
    assert mlflow_db.current_revision(url) == behind


def test_upgrade_that_does_not_finish_in_time_is_stopped(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    make_current_db(uri, tmp_path)
    with pytest.raises(ConnectionFailure) as err:
        mlflow_db.run_upgrade(uri, timeout=0.001)   # far less than a Python start-up
    assert "did not finish within 0s" in one_line(err.value)
    assert "run `mlflow db upgrade <backend store URI>` by hand" in err.value.message


def test_password_stays_out_of_the_upgrade_output(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-value")
    text = "could not connect postgresql://u:hunter22@h/db using aws-secret-value"
    assert mlflow_db._scrub(text, "postgresql://u:hunter22@h/db") == \
        "could not connect postgresql://u:***@h/db using ***"


def test_a_first_start_stopped_during_its_migrations_leaves_no_half_made_database(tmp_path):
    """Found by review (2026-12-06, fifteenth stop): `mlflow server` made a new state folder's
    database in place, one migration after another (about 15 s on 2 cores). A first `mlops up`
    stopped in that time (a Ctrl-C, its health timeout on a slow machine) left a half-migrated
    `mlflow.db`, which `mlflow db upgrade` could not finish ("duplicate column name"), and every
    later `mlops up` said to restore a backup the quick start never made. It is now made beside
    the state folder's name and renamed into place whole."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.helpers import REPO

    home = tmp_path / "my home"
    db, env = home / "mlflow.db", {"MLOPS_HOME": str(home), "MLOPS_MLFLOW_PORT": str(free_port())}
    up = subprocess.Popen([sys.executable, "-m", "mlops", "up"], cwd=REPO, env={**os.environ, **env},
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120       # the database being made: stop the start there
        while up.poll() is None and time.monotonic() < deadline and not (
                home.is_dir() and [p for p in home.iterdir() if "mlflow.db" in p.name]):
            time.sleep(0.02)
        assert up.poll() is None, up.stderr.read()[-2000:]
        up.send_signal(signal.SIGINT)
        up.communicate(timeout=120)
        head, _ = mlflow_db.mlflow_revisions()
        assert not db.exists() or mlflow_db.current_revision(settings_url(db)) == head
        assert [p.name for p in home.iterdir() if "mlflow.db" in p.name and p != db] == []
        r = run_mlops("up", "--json", env=env, timeout=300)          # and the next start works
        assert r.returncode == 0, r.stderr[-2000:]
        assert mlflow_client(json.loads(r.stdout)["mlflow_ui"]).create_experiment("after-a-stopped-start")
    finally:
        if up.poll() is None:
            up.kill()
        run_mlops("down", env=env)


def settings_url(path):
    from mlops_common import settings

    return settings.sqlite_url(path)


def test_new_databases_are_copied_from_one_schema_only_template(tmp_path, monkeypatch):
    """Found by review (2026-12-06, fifteenth stop): every new state folder's database ran all of
    MLflow's migrations (a subprocess importing MLflow, ~15 s on 2 cores). The schema is now made once
    per (MLflow version, head revision) in the cache folder and copied whole; the template holds no
    experiment (its artifact location would name the first state folder)."""
    import sqlite3

    monkeypatch.setenv("MLOPS_CACHE_DIR", str(tmp_path / "cache"))
    head, _ = mlflow_db.mlflow_revisions()
    first, second = tmp_path / "a" / "mlflow.db", tmp_path / "b" / "mlflow.db"
    mlflow_db.create_sqlite(first)
    template = mlflow_db.template_path()
    assert template.parent == tmp_path / "cache" and head in template.name and template.is_file()
    with contextlib.closing(sqlite3.connect(template)) as db:
        assert db.execute("select count(*) from experiments").fetchone() == (0,)

    def no_migrations(*a, **k):
        raise AssertionError("the schema was made again instead of copied")

    monkeypatch.setattr(mlflow_db, "_create_whole", no_migrations)
    mlflow_db.create_sqlite(second)
    for db in (first, second):
        assert mlflow_db.current_revision(settings_url(db)) == head
    assert sorted(p.name for p in second.parent.iterdir()) == ["mlflow.db"]


def test_an_unwritable_cache_or_a_bad_template_falls_back_to_creating_directly(tmp_path, monkeypatch):
    head, _ = mlflow_db.mlflow_revisions()
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("MLOPS_CACHE_DIR", str(tmp_path / "a-file" / "cache"))    # cannot be made
    mlflow_db.create_sqlite(tmp_path / "one" / "mlflow.db")
    assert mlflow_db.current_revision(settings_url(tmp_path / "one" / "mlflow.db")) == head

    monkeypatch.setenv("MLOPS_CACHE_DIR", str(tmp_path / "cache"))
    template = mlflow_db.template_path()
    template.parent.mkdir()
    template.write_bytes(b"not a database")                  # a damaged cache: not copied, removed
    mlflow_db.create_sqlite(tmp_path / "two" / "mlflow.db")
    assert mlflow_db.current_revision(settings_url(tmp_path / "two" / "mlflow.db")) == head
    assert not template.exists()


def test_a_template_in_a_folder_others_may_write_is_not_used(tmp_path, monkeypatch):
    """Every new database is a copy of the cached template, so one planted in a cache folder other
    users may write (MLOPS_CACHE_DIR on a shared folder) became every new server's database, as long
    as it was at the right revision. Such a folder is not used: the database is made directly."""
    import sqlite3

    head, _ = mlflow_db.mlflow_revisions()
    monkeypatch.setenv("MLOPS_CACHE_DIR", str(tmp_path / "cache"))
    mlflow_db.create_sqlite(tmp_path / "one" / "mlflow.db")          # makes the template
    template = mlflow_db.template_path()
    with sqlite3.connect(template) as con:                              # someone else's planted row
        con.execute("CREATE TABLE planted (x TEXT)")
    (tmp_path / "cache").chmod(0o777)
    mlflow_db.create_sqlite(tmp_path / "two" / "mlflow.db")
    with sqlite3.connect(tmp_path / "two" / "mlflow.db") as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "planted" not in tables
    assert mlflow_db.current_revision(settings_url(tmp_path / "two" / "mlflow.db")) == head


def test_an_upgrade_stopped_midway_leaves_the_sqlite_database_as_it_was(tmp_path, monkeypatch):
    """Found by review (2026-12-06, fifteenth stop): `mlflow db upgrade` ran in place, one migration
    after another; stopped midway (a Ctrl-C after upgrading MLflow, its timeout) it left a
    half-migrated database. It now runs on a copy beside it, renamed into place when whole. Here the
    upgrade applies one of two pending migrations and is killed (SIGKILL)."""
    import hashlib

    db = tmp_path / "mlflow.db"
    uri = settings_url(db)
    make_current_db(uri, tmp_path)
    downgrade_one_revision(uri)
    head, behind = downgrade_one_revision(uri)
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    one_then_die = ("import os, signal; from alembic import command; "
                    "from mlflow.store.db.utils import _get_alembic_config; "
                    f"command.upgrade(_get_alembic_config(os.environ[{mlflow_db.UPGRADE_URI_VAR!r}]), '+1'); "
                    "os.kill(os.getpid(), signal.SIGKILL)")
    monkeypatch.setattr(mlflow_db, "upgrade_command", lambda: [__import__("sys").executable, "-c", one_then_die])
    with pytest.raises(ConfigError) as err:
        mlflow_db.ensure_schema_current(uri)
    assert f"{db} itself is unchanged" in one_line(err.value)
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert mlflow_db.current_revision(uri) == behind
    assert sorted(p.name for p in tmp_path.iterdir() if "mlflow.db" in p.name) == ["mlflow.db"]

    monkeypatch.undo()              # the next start upgrades it whole
    assert mlflow_db.ensure_schema_current(uri).after == head
