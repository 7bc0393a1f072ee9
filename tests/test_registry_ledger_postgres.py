"""The ledger on a real PostgreSQL server (started by the test): migrations, triggers, locking."""
from __future__ import annotations

import pytest

from registry.ledger import Entry, Ledger
from registry.ledger_db import VERSION_TABLE
from tests.test_registry_ledger import assert_unbroken_chain, run_chain


def _raw(url: str):
    """A psycopg2 connection to ``url`` (the ``postgres_url`` fixture: tests/fixtures/postgres.py)."""
    import psycopg2

    return psycopg2.connect(url)


def test_schema_and_append_only_triggers_on_postgres(postgres_url):
    import psycopg2

    led = Ledger(postgres_url)
    e = led.record("promote", "m-pg", outcome="ok", to_version=3, actor="alice", details={"k": "v"})
    assert e.id and e.at.tzinfo is not None
    assert [(x.actor, x.details) for x in Ledger(postgres_url).entries("m-pg")] == [("alice", {"k": "v"})]
    conn = _raw(postgres_url)
    cur = conn.cursor()
    cur.execute(f"select version_num from {VERSION_TABLE}")
    assert cur.fetchall() == [("0001",)]
    for stmt in ("update ledger_entries set actor = 'mallory'", "delete from ledger_entries",
                 "truncate ledger_entries"):
        with pytest.raises(psycopg2.Error, match="append-only"):
            cur.execute(stmt)
        conn.rollback()
    cur.execute("select actor from ledger_entries where model = 'm-pg'")
    assert cur.fetchall() == [("alice",)]
    conn.close()


def test_advisory_lock_serializes_two_processes_on_postgres(postgres_url):
    rows = [e for e in run_chain(postgres_url, 50)]
    assert_unbroken_chain(rows, 50)


def test_failed_block_keeps_nothing_on_postgres(postgres_url):
    led = Ledger(postgres_url)
    with pytest.raises(RuntimeError):
        with led.serialized("m-rollback") as tx:
            tx.append(Entry("promote", "m-rollback", "ok", to_version=1))
            raise RuntimeError("boom")
    assert led.entries("m-rollback") == []


def test_shares_a_postgres_database_with_mlflow(postgres_url):
    """Own version table: MLflow's schema (alembic_version) in the same database is left as it was."""
    import sqlalchemy as sa
    from mlflow.store.db.utils import _safe_initialize_tables, _verify_schema

    conn = _raw(postgres_url)
    conn.autocommit = True
    conn.cursor().execute("CREATE DATABASE shared_with_mlflow")
    conn.close()
    url = postgres_url.rsplit("/", 1)[0] + "/shared_with_mlflow"
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg2://"))
    _safe_initialize_tables(engine)
    with engine.connect() as c:
        before = c.exec_driver_sql("select version_num from alembic_version").all()
    Ledger(url).record("register", "m", outcome="ok", to_version=1)
    with engine.connect() as c:
        assert c.exec_driver_sql("select version_num from alembic_version").all() == before
        assert c.exec_driver_sql(f"select version_num from {VERSION_TABLE}").all() == [("0001",)]
        assert c.exec_driver_sql("select count(*) from ledger_entries").scalar() == 1
    _verify_schema(engine)   # MLflow still accepts its database
    engine.dispose()


def test_two_processes_migrate_a_fresh_postgres_database_at_once(postgres_url):
    import subprocess
    import sys

    from tests.helpers import REPO
    from tests.test_registry_ledger import _APPENDER

    conn = _raw(postgres_url)
    conn.autocommit = True
    conn.cursor().execute("CREATE DATABASE fresh_ledger")
    conn.close()
    url = postgres_url.rsplit("/", 1)[0] + "/fresh_ledger"
    procs = [subprocess.Popen([sys.executable, "-c", _APPENDER, url, host, "10"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for host in ("a", "b")]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert len(Ledger(url).entries("m")) == 20


def test_a_held_promotion_lock_is_waited_for_within_a_bound_on_postgres(postgres_url, monkeypatch):
    """pg_advisory_lock waited with no bound (a holder whose machine vanished kept it until TCP
    keepalive noticed, about two hours) and a Ctrl-C was lost meanwhile."""
    import time

    from mlops_common.errors import ConnectionFailure
    from registry import ledger_db as ledger_db_mod

    monkeypatch.setattr(ledger_db_mod, "LOCK_WAIT_S", 1.0)
    holder = _raw(postgres_url)
    holder.autocommit = True
    holder.cursor().execute("SELECT pg_advisory_lock(%s)", (ledger_db_mod._lock_key("m-held"),))
    led = Ledger(postgres_url)
    try:
        t0 = time.monotonic()
        with pytest.raises(ConnectionFailure, match="another promotion holds it"):
            with led.serialized("m-held"):
                pass
        with pytest.raises(ConnectionFailure, match="another promotion holds it"):
            led.append(Entry(action="gate", model="m-held", outcome="passed", to_version=1))
        assert time.monotonic() - t0 < 10
    finally:
        holder.cursor().execute("SELECT pg_advisory_unlock(%s)", (ledger_db_mod._lock_key("m-held"),))
        holder.close()
    with led.serialized("m-held") as tx:                    # free again: no lock left behind
        tx.append(Entry(action="gate", model="m-held", outcome="passed", to_version=1))
    assert [e.action for e in led.entries("m-held")] == ["gate"]


def test_times_are_read_back_in_utc_whatever_the_servers_time_zone(postgres_server):
    """The history and the version description label their times UTC. PostgreSQL hands a
    ``timestamptz`` back in the session's time zone (the server's ``timezone`` setting, which
    initdb takes from the machine, or the database's): a ledger on a server set to Tokyo showed
    times 9 hours off, still labelled UTC."""
    from datetime import timedelta, timezone

    from registry import description
    from registry.history import history_table

    url = postgres_server.create_database("tz")
    conn = _raw(url)
    conn.autocommit = True
    conn.cursor().execute(f"ALTER DATABASE \"{url.rsplit('/', 1)[1]}\" SET timezone TO 'Asia/Tokyo'")
    conn.close()
    led = Ledger(url)
    written = led.record("promote", "m-tz", outcome="ok", from_version=1, to_version=2, actor="alice")
    cur = _raw(url).cursor()
    cur.execute("show timezone")
    assert cur.fetchone() == ("Asia/Tokyo",)        # the session really is in another zone
    [read] = Ledger(url).entries("m-tz")
    assert read.at == written.at and read.at.utcoffset() == timedelta(0), read.at
    utc = written.at.astimezone(timezone.utc)
    assert utc.strftime("%Y-%m-%d %H:%M:%S") in history_table([read])
    text = description.render(version=2, tags={}, aliases=("production",), entries=[read])
    assert f"| #{read.id} | {utc:%Y-%m-%d %H:%M} | promote |" in text, text
    assert f"by alice, {utc:%Y-%m-%d %H:%M} UTC" in text, text


def test_a_writer_waiting_for_the_ledger_lock_stops_at_ctrl_c_on_postgres(postgres_server):
    """A plain append waits for the model's promotion lock; it waited in a blocking
    pg_advisory_xact_lock, inside psycopg2's C call, where Ctrl-C and SIGTERM went unseen for the
    whole two-minute lock_timeout."""
    from registry import ledger_db as ledger_db_mod
    from tests.test_registry_ledger import ctrl_c_a_waiting_writer

    url = postgres_server.create_database("ledger")
    Ledger(url)
    holder = _raw(url)
    holder.autocommit = True
    holder.cursor().execute("SELECT pg_advisory_lock(%s)", (ledger_db_mod._lock_key("m"),))
    watcher = _raw(url)
    watcher.autocommit = True

    def asking(pid: int) -> bool:       # its session asks for the lock (this query's own text matches too)
        cur = watcher.cursor()
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND "
                    "query LIKE '%advisory_xact_lock%' AND xact_start IS NOT NULL AND pid <> pg_backend_pid()")
        return bool(cur.fetchone()[0])

    def release() -> None:
        holder.close()
        watcher.close()

    ctrl_c_a_waiting_writer(url, asking, release)


def test_replay_reads_of_a_long_history_are_bounded_on_postgres(postgres_url, monkeypatch):
    from tests.test_registry_ledger import bounded_reads_agree

    bounded_reads_agree(postgres_url, monkeypatch)


def test_a_role_that_cannot_change_the_schema_is_told_to_migrate_once_with_the_owner(postgres_server):
    """Found by review (2026-12-07, eighteenth stop): a newer mlops opening a ledger that needs a
    migration (here: none made yet), with a database role allowed to read and write rows but not
    to change the schema, printed PostgreSQL's raw "permission denied for schema public". Now one
    line: the ledger needs a schema migration, run it once with the owner role (the command)."""
    from tests.helpers import error_lines, run_mlops

    url = postgres_server.create_database("needs_migration")
    db = url.rsplit("/", 1)[1]
    conn = postgres_server.connect(db)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("CREATE ROLE ledger_writer LOGIN PASSWORD 'w-secret-1'")
    cur.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")      # PostgreSQL < 15 still grants it
    cur.execute("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT ON TABLES TO ledger_writer")
    cur.execute("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE ON SEQUENCES TO ledger_writer")
    conn.close()
    writer = f"postgresql://ledger_writer:w-secret-1@{postgres_server.host}:{postgres_server.port}/{db}"

    r = run_mlops("registry", "history", "--limit", "1", env={"MLOPS_LEDGER_URL": writer})
    assert r.returncode == 2, r.stderr[-2000:]
    assert error_lines(r.stderr) == [
        f"error: the ledger at postgresql://ledger_writer:***@{postgres_server.host}:{postgres_server.port}/{db} "
        f"needs a schema migration (revision none -> 0001) and this database role may not change the "
        f"schema; run it once as the role that owns the schema: MLOPS_LEDGER_URL=<the owner's URL> mlops "
        f"registry history --limit 1 (any command that reads the ledger migrates it), then retry"]
    assert "w-secret-1" not in r.stderr + r.stdout
    conn = postgres_server.connect(db)
    cur = conn.cursor()
    cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
    assert cur.fetchall() == [(0,)]                 # nothing half-made
    conn.close()
    # the command it names, run by the owner, is the way out; the writer role then works
    r = run_mlops("registry", "history", "--limit", "1", env={"MLOPS_LEDGER_URL": url})
    assert r.returncode == 0, r.stderr[-2000:]
    led = Ledger(writer)
    led.record("promote", "m-role", outcome="ok", to_version=1, actor="ci")
    assert [e.actor for e in Ledger(writer).entries("m-role")] == ["ci"]
