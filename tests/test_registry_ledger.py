"""The append-only ledger on SQLite: schema via Alembic, append-only in code and in the database."""
from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys

import pytest

from mlops_common.errors import ConfigError, ConnectionFailure
from registry.ledger import ACTIONS, OUTCOMES, Entry, Ledger
from registry.ledger_db import VERSION_TABLE
from tests.fixtures.faults import fill_inodes
from tests.helpers import REPO, run_mlops


@pytest.fixture
def ledger_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'state' / 'ledger.db'}"


def test_schema_is_created_by_alembic_with_its_own_version_table(ledger_url, tmp_path):
    Ledger(ledger_url)
    db = sqlite3.connect(tmp_path / "state" / "ledger.db")
    tables = {r[0] for r in db.execute("select name from sqlite_master where type='table'")}
    assert {"ledger_entries", VERSION_TABLE} <= tables
    assert "alembic_version" not in tables
    assert db.execute(f"select version_num from {VERSION_TABLE}").fetchall() == [("0001",)]
    triggers = {r[0] for r in db.execute("select name from sqlite_master where type='trigger'")}
    assert triggers == {"ledger_entries_no_update", "ledger_entries_no_delete"}


def test_append_and_read_back(ledger_url):
    led = Ledger(ledger_url)
    a = led.record("register", "m1", outcome="ok", to_version=1, actor="ci", pipeline_id="p1",
                   details={"run_id": "r1"})
    b = led.record("promote", "m1", outcome="ok", from_version=None, to_version=1, actor="alice",
                   reason="first release")
    led.record("register", "m2", outcome="ok", to_version=1)
    led.record("deploy", "m1", outcome="failed", to_version=1, host="web-1", reason="smoke test failed")
    assert a.id < b.id and a.at.tzinfo is not None
    rows = Ledger(ledger_url).entries("m1")
    assert [(e.action, e.outcome) for e in rows] == [("register", "ok"), ("promote", "ok"),
                                                     ("deploy", "failed")]
    assert rows[0].details == {"run_id": "r1"} and rows[1].details == {}
    assert rows[1].reason == "first release" and rows[2].host == "web-1"
    assert [e.model for e in led.entries()] == ["m1", "m1", "m2", "m1"]
    assert [e.action for e in led.entries("m1", limit=2)] == ["promote", "deploy"]
    assert [e.action for e in led.entries("m1", actions=("promote", "deploy"))] == ["promote", "deploy"]
    assert rows[0].to_dict()["at"].endswith("+00:00")


def test_details_are_stored_as_strict_json(ledger_url):
    """Found by a review (2026-12-06, sixteenth stop): a NaN or infinity in a row's details was
    stored as the bare token `NaN` / `Infinity`, which PostgreSQL's `details::json`, jq and
    JSON.parse refuse. Now null (Python's reader took the tokens, so only other readers saw it)."""
    import json

    import sqlalchemy as sa

    led = Ledger(ledger_url)
    led.record("deploy", "m", outcome="failed", details={"max_diff": float("inf"), "p95": [float("nan"), 1.5]})
    with led._engine.connect() as conn:
        (text,) = conn.execute(sa.text("select details from ledger_entries")).scalars()

    def refuse(token):
        raise ValueError(f"not JSON: {token}")
    assert json.loads(text, parse_constant=refuse) == {"max_diff": None, "p95": [None, 1.5]}
    assert led.entries("m")[0].details == {"max_diff": None, "p95": [None, 1.5]}


def test_rows_never_carry_secret_values(ledger_url, monkeypatch):
    from mlops_common.errors import RefusedError

    monkeypatch.setenv("CIRCLE_TOKEN", "circle-tok-5ecret")
    led = Ledger(ledger_url)
    with pytest.raises(RefusedError, match="secret"):
        led.record("promote", "m", outcome="ok", reason="approved with circle-tok-5ecret")
    with pytest.raises(RefusedError, match="secret"):
        led.record("promote", "m", outcome="ok", details={"header": "circle-tok-5ecret"})
    assert led.entries("m") == []


def test_append_all_writes_rows_in_one_transaction_all_or_none(ledger_url, monkeypatch):
    """A fleet's wave records its hosts' rows with one commit, not one per host; a row that
    cannot be written (here: it carries a secret) leaves none of them behind."""
    import sqlalchemy as sa

    from mlops_common.errors import RefusedError

    led = Ledger(ledger_url)
    commits = []
    sa.event.listen(led._engine, "commit", lambda conn: commits.append(1))
    wave = [Entry("deploy", "m", "ok", to_version=2, host=f"web-{i}") for i in range(3)]
    written = led.append_all(wave)
    assert len(commits) == 1
    assert [e.host for e in written] == ["web-0", "web-1", "web-2"]
    assert written[0].id < written[1].id < written[2].id and all(e.at is not None for e in written)
    assert [e.host for e in led.entries("m")] == ["web-0", "web-1", "web-2"]
    for e in wave:
        led.append(e)
    assert len(commits) == 4                    # one per append: what append_all saves
    assert led.append_all([]) == [] and len(commits) == 4

    monkeypatch.setenv("CIRCLE_TOKEN", "circle-tok-5ecret")
    with pytest.raises(RefusedError, match="secret"):
        led.append_all([Entry("host_rollback", "n", "ok", host="web-0"),
                        Entry("host_rollback", "n", "ok", host="web-1", reason="circle-tok-5ecret")])
    assert led.entries("n") == []
    with pytest.raises(ValueError, match="one model"):
        led.append_all([Entry("deploy", "m", "ok"), Entry("deploy", "n", "ok")])
    assert len(led.entries("m")) == 6 and led.entries("n") == []


def test_entries_are_validated():
    with pytest.raises(ValueError, match="unknown ledger action"):
        Entry("delete", "m", "ok")
    with pytest.raises(ValueError, match="unknown ledger outcome"):
        Entry("promote", "m", "maybe")
    assert {"register", "gate", "promote", "rollback", "deploy", "smoke_test", "host_rollback",
            "intent"} <= set(ACTIONS)
    assert {"ok", "passed", "failed", "refused", "rolled_back", "pending"} <= set(OUTCOMES)


def test_database_rejects_update_and_delete(ledger_url, tmp_path):
    Ledger(ledger_url).record("promote", "m", outcome="ok", to_version=1, actor="alice")
    db = sqlite3.connect(tmp_path / "state" / "ledger.db")
    for stmt in ("update ledger_entries set actor='mallory'", "delete from ledger_entries"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute(stmt)
        db.rollback()
    assert db.execute("select actor from ledger_entries").fetchall() == [("alice",)]


def test_no_update_or_delete_path_in_the_code():
    source = "\n".join(p.read_text() for p in (REPO / "registry").rglob("*.py")
                       if "migrations" not in p.parts)
    assert not re.search(r"\.(update|delete)\(\s*\)", source)
    assert not re.search(r"(?i)\b(update\s+ledger_entries|delete\s+from\s+ledger_entries)\b", source)
    assert "entries_table.update" not in source and "entries_table.delete" not in source


def test_rows_appended_in_a_failed_serialized_block_are_not_kept(ledger_url):
    led = Ledger(ledger_url)
    with pytest.raises(RuntimeError):
        with led.serialized("m") as tx:
            tx.append(Entry("promote", "m", "ok", to_version=1))
            assert [e.to_version for e in tx.entries()] == [1]   # visible inside the transaction
            raise RuntimeError("alias move failed")
    assert led.entries("m") == []
    with led.serialized("m") as tx:
        tx.append(Entry("promote", "m", "ok", to_version=2))
        with pytest.raises(ValueError, match="holds the lock of 'm'"):
            tx.append(Entry("promote", "other", "ok", to_version=2))
    assert [e.to_version for e in led.entries("m")] == [2]


_APPENDER = r"""
import sys
from registry.ledger import Ledger
led = Ledger(sys.argv[1])
for i in range(int(sys.argv[3])):
    led.record("smoke_test", "m", outcome="passed", host=sys.argv[2], to_version=i)
"""


def test_two_processes_first_use_and_append_concurrently(ledger_url):
    """Both processes migrate a fresh database at once and append: nothing fails or goes missing."""
    procs = [subprocess.Popen([sys.executable, "-c", _APPENDER, ledger_url, host, "25"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for host in ("a", "b")]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    rows = Ledger(ledger_url).entries("m")
    assert len(rows) == 50
    for host in ("a", "b"):
        assert [e.to_version for e in rows if e.host == host] == list(range(25))


def test_refuses_mlflows_own_sqlite_file(tmp_path):
    """The promotion lock would block the MLflow server writing the same SQLite file."""
    import sqlalchemy as sa
    from mlflow.store.db.utils import _safe_initialize_tables

    path = tmp_path / "mlflow.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    _safe_initialize_tables(engine)
    engine.dispose()
    with pytest.raises(ConfigError, match="is MLflow's own SQLite database"):
        Ledger(f"sqlite:///{path}")
    db = sqlite3.connect(path)
    assert db.execute("select count(*) from sqlite_master where name = 'ledger_entries'").fetchone() == (0,)


def test_unknown_newer_schema_is_refused(tmp_path):
    path = tmp_path / "future.db"
    db = sqlite3.connect(path)
    db.execute(f"create table {VERSION_TABLE} (version_num varchar(32) not null primary key)")
    db.execute(f"insert into {VERSION_TABLE} values ('9999')")
    db.commit()
    with pytest.raises(ConfigError, match="revision 9999, which this version of tfmodel-delivery does not know"):
        Ledger(f"sqlite:///{path}")


def test_a_newer_release_migrating_while_this_one_waits_for_the_schema_lock_says_upgrade(tmp_path, monkeypatch):
    """Found by a review (2026-12-07, eighteenth stop): the check for a schema revision this
    release does not know ran before the schema lock was taken; a newer release's mlops migrating
    the fresh ledger while this one waited for that lock left Alembic's words, `cannot migrate
    the ledger at ...: Can't locate revision identified by '9999'`, with nothing to do. Now the
    check runs again under the lock: the same line as a ledger found newer at once, `upgrade it`."""
    import contextlib

    import registry.ledger_db as ledger_mod

    path, real = tmp_path / "raced.db", ledger_mod.write_transaction

    @contextlib.contextmanager
    def newer_migrated_first(engine, model):        # the other process held the lock and migrated
        db = sqlite3.connect(path)
        db.execute(f"create table {VERSION_TABLE} (version_num varchar(32) not null primary key)")
        db.execute(f"insert into {VERSION_TABLE} values ('9999')")
        db.commit()
        db.close()
        with real(engine, model) as conn:
            yield conn

    monkeypatch.setattr(ledger_mod, "write_transaction", newer_migrated_first)
    with pytest.raises(ConfigError, match=r"revision 9999, which this version of tfmodel-delivery does not "
                                          r"know \(newest: 0001\); upgrade it$"):
        Ledger(f"sqlite:///{path}")
    db = sqlite3.connect(path)
    assert db.execute("select count(*) from sqlite_master where name = 'ledger_entries'").fetchone() == (0,)


def test_a_password_given_as_a_query_parameter_is_masked_in_messages():
    """Found by a review (2026-12-07, eighteenth stop): ``safe_url`` masked the URL's password but
    not libpq's ``?password=`` query parameter, so `cannot open the ledger database
    postgresql://u@127.0.0.1:1/db?password=...` showed it (the CLI's redaction of the
    environment's secrets hid it there; the library's message, logged elsewhere, did not)."""
    from registry.ledger_db import safe_url

    url = "postgresql://u@127.0.0.1:1/db?sslmode=disable&password=hunter2-query-secret&connect_timeout=5"
    shown = safe_url(url)       # SQLAlchemy renders the query parameters sorted
    assert "hunter2-query-secret" not in shown and "password=***" in shown and "sslmode=disable" in shown
    assert safe_url("postgresql://u@127.0.0.1:1/db?password=hunter2-query-secret") == \
        "postgresql://u@127.0.0.1:1/db?password=***"
    with pytest.raises(ConnectionFailure) as exc:
        Ledger(url)
    assert "hunter2-query-secret" not in exc.value.message and "password=***" in exc.value.message


def test_bad_urls_are_one_clear_line():
    with pytest.raises(ConfigError, match="not a valid SQLAlchemy URL"):
        Ledger("not a url")
    with pytest.raises(ConfigError, match="supports sqlite:// and postgresql://"):
        Ledger("mysql://u@127.0.0.1/db")
    with pytest.raises(ConnectionFailure) as exc:
        Ledger("postgresql://ledger:hunter2-secret@127.0.0.1:1/ledger")
    assert "hunter2-secret" not in str(exc.value) and "***@127.0.0.1:1/ledger" in str(exc.value)


def test_history_command_table_and_json(mlops_env):
    led = Ledger()
    led.record("register", "alpha", outcome="ok", to_version=1, actor="ci")
    led.record("promote", "alpha", outcome="ok", to_version=1, actor="alice", pipeline_id="p-9",
               reason="release 1")
    led.record("register", "beta", outcome="ok", to_version=1, actor="ci")
    r = run_mlops("registry", "history")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:4] == ["id", "at", "(UTC)", "action"]
    assert len(lines) == 2 + 3 and "release 1" in r.stdout and "none->v1" in r.stdout
    r = run_mlops("registry", "history", "--json", "--model", "alpha", "--limit", "1")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [(d["action"], d["actor"], d["pipeline_id"]) for d in doc] == [("promote", "alice", "p-9")]
    r = run_mlops("registry", "history", "--action", "explode")
    assert r.returncode == 2 and r.stderr.strip().startswith("error: unknown action explode")
    assert len(r.stderr.strip().splitlines()) == 1


def test_history_on_unreadable_ledger_is_one_line(mlops_env, tmp_path):
    bad = tmp_path / "not-a-db.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    r = run_mlops("registry", "history", env={"MLOPS_LEDGER_URL": f"sqlite:///{bad}"})
    assert r.returncode != 0
    assert r.stderr.startswith("error: cannot open the ledger database") and "Traceback" not in r.stderr
    assert bad.read_bytes() == b"this is not sqlite" * 100


CHAIN_WORKER = r"""
import sys
import time
from registry.ledger import Entry, Ledger
led = Ledger(sys.argv[1])
for _ in range(int(sys.argv[3])):
    with led.serialized("m") as tx:
        rows = tx.entries(actions=("promote",), limit=1)
        last = rows[-1].to_version if rows else 0
        tx.commit()         # as a promotion commits its intent row: the lock, not one transaction,
        time.sleep(0.01)    # must keep the other process out until the block ends
        tx.append(Entry("promote", "m", "ok", from_version=last, to_version=last + 1, actor=sys.argv[2]))
"""


def run_chain(url: str, rounds: int) -> list[Entry]:
    """Two processes each do read-last-row-then-append under the lock ``rounds`` times."""
    procs = [subprocess.Popen([sys.executable, "-c", CHAIN_WORKER, url, name, str(rounds)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in ("p1", "p2")]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    return Ledger(url).entries("m", actions=("promote",))


def assert_unbroken_chain(rows: list[Entry], rounds: int) -> None:
    assert len(rows) == 2 * rounds
    assert [(e.from_version, e.to_version) for e in rows] == [(i, i + 1) for i in range(2 * rounds)]
    assert {e.actor for e in rows} == {"p1", "p2"}


def test_serialized_blocks_of_two_processes_never_interleave(ledger_url):
    """Read-then-append under the lock from two processes: every row continues the previous one."""
    assert_unbroken_chain(run_chain(ledger_url, 40), 40)


@pytest.mark.parametrize("url, words", [
    ("sqlite://", "in-memory"), ("sqlite:///", "in-memory"), ("sqlite:///:memory:", "in-memory"),
    ("sqlite+pysqlite:///:memory:", "in-memory"),
    ("sqlite:///ledger.db", "relative SQLite path ('ledger.db'"),
    ("sqlite:///nonexistent/dir/l.db", "four slashes: sqlite:////abs/path/ledger.db"),
])
def test_ledger_urls_that_lose_rows_quietly_are_refused(monkeypatch, url, words):
    from mlops_common import settings

    monkeypatch.setenv("MLOPS_LEDGER_URL", url)
    with pytest.raises(ConfigError, match=re.escape(words)):
        settings.ledger_url()


def test_file_and_server_ledger_urls_pass(monkeypatch, tmp_path):
    from mlops_common import settings

    for url in (f"sqlite:///{tmp_path / 'ledger.db'}", "postgresql://mlops@127.0.0.1:5432/ledger"):
        monkeypatch.setenv("MLOPS_LEDGER_URL", url)
        assert settings.ledger_url() == url


def test_a_version_a_deploy_began_and_nothing_judged_is_unjudged(ledger_url):
    """``DeployLedger.unjudged`` (review of 2026-12-05, ninth stop): a deploy of it began (its
    prepare's smoke_test rows) and no canary passed nor any rollout finished; a fleet adopted as
    it is (no rows of the version) is not."""
    from registry.deploys import DeployLedger

    ledger = Ledger(ledger_url)
    rows = DeployLedger("m", ledger=ledger)
    assert not rows.unjudged(2)                                          # no row of v2: adopted as it is
    killed = DeployLedger("m", ledger=ledger)
    killed("smoke_test", "passed", host="h1", from_version=1, to_version=2)
    assert rows.unjudged(2)
    killed("canary", "failed", host="h1", from_version=1, to_version=2)
    assert rows.unjudged(2)                                              # a breach is no verdict for it
    killed("canary", "passed", host="h1", from_version=1, to_version=2)
    assert not rows.unjudged(2)
    other = DeployLedger("m", ledger=ledger)
    other("smoke_test", "passed", host="h1", from_version=2, to_version=3)
    assert not other.unjudged(3) and rows.unjudged(3)                    # its own rows are left out
    finished = DeployLedger("m", ledger=ledger)
    for h in ("h1", "h2"):
        finished("deploy", "ok", host=h, from_version=2, to_version=3, details={"final": True})
    assert not rows.unjudged(3)


def test_a_disk_without_room_for_the_promotion_lock_file_is_one_line(tmpfs):
    """The promotion lock file beside a SQLite ledger is made at the first promotion; on a disk out
    of inodes (or space for it) that open was an OSError traceback. Now one line naming the file;
    the ledger's rows are as they were."""
    folder = tmpfs("200k,nr_inodes=4")
    led = Ledger(f"sqlite:///{folder}/ledger.db")
    led.append(Entry(action="register", model="m", to_version=1, outcome="ok"))
    fill_inodes(folder)
    with pytest.raises(ConnectionFailure) as e:
        with led.serialized("m") as tx:
            tx.append(Entry(action="promote", model="m", to_version=1, outcome="ok"))
    assert f"{folder}/ledger.db.lock" in str(e.value) and "No space left on device" in str(e.value), e.value
    assert [r.action for r in led.entries("m")] == ["register"]


def test_text_that_is_not_utf8_is_one_line_not_a_traceback(ledger_url, monkeypatch):
    """Bytes of another encoding (a Latin-1 terminal's é) reach Python as lone surrogates, which
    the database driver cannot encode: `registry history --model`, a promotion's --reason and a
    row whose actor came from the environment were tracebacks."""
    from mlops_common.errors import RefusedError

    monkeypatch.setenv("MLOPS_LEDGER_URL", ledger_url)
    led = Ledger()
    led.record("register", "café", outcome="ok", to_version=1, actor="ci")
    r = run_mlops("registry", "history", "--model", "caf\udce9")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "--model" in r.stderr and "is not UTF-8 text" in r.stderr
    r = run_mlops("registry", "promote", "1", "--reason", "approved by M\udcfcller")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "is not UTF-8 text" in r.stderr, r.stderr
    with pytest.raises(RefusedError, match="its actor is not UTF-8 text"):
        led.record("promote", "café", outcome="ok", to_version=1, actor="m\udcfcller")
    assert [(e.model, e.actor) for e in led.entries()] == [("café", "ci")]


_WAITING_WRITER = r"""
import sys
from registry.ledger import Ledger
led = Ledger(sys.argv[1])
print("ready", flush=True)
try:
    led.record("smoke_test", "m", outcome="passed", host="h")
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
"""


def _held_write_lock(ledger_url: str) -> sqlite3.Connection:
    """Another process's writer, mid-transaction: SQLite's write lock held."""
    db = sqlite3.connect(ledger_url.removeprefix("sqlite:///"), isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    return db


def ctrl_c_a_waiting_writer(ledger_url: str, waiting, release) -> None:
    """Runs ``_WAITING_WRITER`` on ``ledger_url`` (whose lock the caller holds) until
    ``waiting(pid)`` says it waits for the lock (bounded: 10 s), sends it SIGINT, calls
    ``release()`` once it is gone, and checks that it stopped at once (exit 130) with nothing written."""
    import signal
    import time

    p = subprocess.Popen([sys.executable, "-c", _WAITING_WRITER, ledger_url], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 10
        for _ in range(2000):
            if waiting(p.pid):
                break
            if time.monotonic() > deadline:
                pytest.fail("the writer never waited for the lock")
            time.sleep(0.005)
        else:
            pytest.fail("the writer never waited for the lock")
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate(timeout=30)
        release()
    assert p.returncode == 130 and out.strip() == "interrupted", err
    assert Ledger(ledger_url).entries("m") == []


def test_a_writer_waiting_for_the_sqlite_lock_stops_at_ctrl_c(ledger_url):
    """SQLite's busy handler sleeps in C, where Python runs no signal handler: a writer waiting
    for another process's write lock ignored Ctrl-C (and SIGTERM, a cancelled CI job) for the
    whole two-minute timeout."""
    def sleeping(pid: int) -> bool:
        with open(f"/proc/{pid}/wchan") as f:
            return "sleep" in f.read()

    Ledger(ledger_url)
    db = _held_write_lock(ledger_url)
    ctrl_c_a_waiting_writer(ledger_url, sleeping, release=lambda: db.execute("ROLLBACK"))


def test_writer_threads_waiting_for_the_sqlite_lock_give_up_within_one_bound(ledger_url, monkeypatch):
    """A fleet deploy's host threads queue on one lock per database: each waited the whole busy
    timeout in turn behind another process's writer, so the last of N gave up after N timeouts."""
    import threading
    import time

    import registry.ledger_db as ledger_db_mod
    from mlops_common.errors import UserError

    monkeypatch.setattr(ledger_db_mod, "SQLITE_BUSY_TIMEOUT_S", 1)
    led = Ledger(ledger_url)
    db = _held_write_lock(ledger_url)
    failures: list[str] = []

    def write(host: str) -> None:
        try:
            led.record("smoke_test", "m", outcome="passed", host=host)
        except UserError as exc:
            failures.append(exc.message)

    threads = [threading.Thread(target=write, args=(f"h{i}",)) for i in range(6)]
    start = time.monotonic()
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        db.execute("ROLLBACK")
    took = time.monotonic() - start
    assert len(failures) == 6 and all("database is locked" in m or "waited 1s" in m for m in failures), failures
    assert took < 3.5, f"six writers gave up after {took:.1f}s, not within the one 1 s bound"


def test_a_postgres_server_that_never_answers_is_one_line_within_a_bound(tmp_path):
    """A server that accepts the connection and never answers (an SSH tunnel whose far end is gone,
    a frozen server): every command that reads the ledger hung, Ctrl-C unseen in psycopg2's C call."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as silent:      # the kernel accepts; nobody answers
        url = f"postgresql://ledger:hunter2-secret@127.0.0.1:{silent.getsockname()[1]}/ledger"
        try:
            r = run_mlops("registry", "history", env={"MLOPS_LEDGER_URL": url, "MLOPS_HOME": str(tmp_path)},
                          timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("`registry history` still waited for the silent server after 60 s")
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("error: cannot open the ledger database") and "timeout expired" in r.stderr
    assert "hunter2-secret" not in r.stderr


def test_status_on_a_ledger_it_may_only_read_still_shows_the_mismatch(make_version, tmpfs):
    """`registry status` reads a disagreement again under the promotion lock; on a ledger it may
    only read (a read-only disk, a file of another user) that lock could not be had, and status
    printed one error line instead of the MISMATCH it had found."""
    import os

    model = os.environ["MLOPS_MODEL_NAME"]
    v1 = make_version(validation_status="passed")
    disk = tmpfs("4m")
    url = f"sqlite:///{disk / 'ledger.db'}"
    from registry import ledger_db as ledger_db_mod

    Ledger(url).record("promote", model, outcome="ok", to_version=v1, actor="alice")   # the alias is not on v1
    ledger_db_mod._engines.pop(url).dispose()      # no file of the disk left open: it can be made read-only
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True, timeout=30)
    r = run_mlops("registry", "status", env={"MLOPS_LEDGER_URL": url})
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "MISMATCH" in r.stdout and "could not read the ledger" in r.stderr, (r.stdout, r.stderr)


def test_a_postgres_url_without_psycopg2_installed_says_what_to_install():
    """postgresql:// with psycopg2 missing said "use postgresql:// (psycopg2)": what was used."""
    code = ("import sys; sys.modules['psycopg2'] = None\n"
            "from mlops_common.errors import ConfigError\nfrom registry.ledger import Ledger\n"
            "try:\n    Ledger('postgresql://ledger:hunter2-secret@127.0.0.1:1/ledger')\n"
            "except ConfigError as exc:\n    print(exc.message)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "psycopg2-binary" in r.stdout and "use postgresql://" not in r.stdout, r


class _TakenThenInterrupted:
    """An RLock whose first acquire takes it and then raises KeyboardInterrupt: a forced stop
    (the second Ctrl-C / SIGTERM) landing right after the acquire returned, before any ``try``."""

    def __init__(self):
        import threading

        self.real, self.interrupted = threading.RLock(), False

    def acquire(self, timeout: float = -1) -> bool:
        got = self.real.acquire(timeout=timeout)
        if not self.interrupted:
            self.interrupted = True
            raise KeyboardInterrupt
        return got

    def release(self) -> None:
        self.real.release()

    def _is_owned(self) -> bool:
        return self.real._is_owned()


def _free_for_another_thread(lock) -> bool:
    import threading

    took: list[bool] = []

    def take() -> None:
        if lock.acquire(timeout=0):
            lock.release()
            took.append(True)

    t = threading.Thread(target=take)
    t.start()
    t.join(timeout=10)
    return took == [True]


def test_a_forced_stop_right_after_the_writers_lock_was_taken_leaves_it_free(ledger_url, monkeypatch):
    """The lock was taken before the ``try`` that released it: a forced stop in between left it
    held, and every later write of the process (the host_rollback rows) waited it out and failed."""
    import registry.ledger_db as ledger_db_mod

    led = Ledger(ledger_url)
    lock = _TakenThenInterrupted()
    monkeypatch.setitem(ledger_db_mod._sqlite_writers, str(led._engine.url), lock)
    with pytest.raises(KeyboardInterrupt):
        led.record("deploy", "m", outcome="failed")
    assert lock.interrupted and _free_for_another_thread(lock.real)
    led.record("host_rollback", "m", outcome="ok", host="h1")
    assert [e.action for e in led.entries("m")] == ["host_rollback"]


def test_a_forced_stop_right_after_the_in_memory_promotion_lock_was_taken_leaves_it_free(monkeypatch):
    import sqlalchemy as sa

    import registry.ledger_db as ledger_db_mod

    lock = _TakenThenInterrupted()
    monkeypatch.setitem(ledger_db_mod._local_locks, "sqlite://", lock)
    with pytest.raises(KeyboardInterrupt):
        with ledger_db_mod._sqlite_promotion_lock(sa.create_engine("sqlite://"), "sqlite://"):
            pass
    assert lock.interrupted and _free_for_another_thread(lock.real)


class _PublicOnly:
    """An RLock seen through its public API alone (acquire / release): no ``_is_owned``."""

    def __init__(self, lock):
        self.acquire, self.release = lock.acquire, lock.release


def test_the_writers_lock_is_released_through_the_public_api_alone(ledger_url, monkeypatch):
    """Found by a review (2026-12-07, eighteenth stop): ``_held`` asked ``RLock._is_owned()``, a
    private CPython method, whether to release. Now the documented ``release`` decides: it raises
    RuntimeError in a thread that does not hold the lock. A forced stop right after the acquire,
    a timed-out wait, and a normal write all leave it free."""
    import threading

    import registry.ledger_db as ledger_mod

    led = Ledger(ledger_url)
    interrupted = _TakenThenInterrupted()
    monkeypatch.setitem(ledger_mod._sqlite_writers, str(led._engine.url), _PublicOnly(interrupted))
    with pytest.raises(KeyboardInterrupt):
        led.record("deploy", "m", outcome="failed")
    assert _free_for_another_thread(interrupted.real)
    led.record("host_rollback", "m", outcome="ok", host="h1")
    assert _free_for_another_thread(interrupted.real)

    held, release, done = threading.RLock(), threading.Event(), threading.Event()

    def hold() -> None:
        with held:
            done.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert done.wait(30)
        monkeypatch.setattr(ledger_mod, "SQLITE_BUSY_TIMEOUT_S", 0.05)
        with pytest.raises(ConnectionFailure, match="nothing was recorded"):
            with ledger_mod._held(_PublicOnly(held), lambda: ConnectionFailure("nothing was recorded")):
                pass
    finally:
        release.set()
        holder.join(30)
    assert [e.action for e in led.entries("m")] == ["host_rollback"]


def test_rows_of_an_action_or_outcome_a_newer_mlops_wrote_are_read_as_they_are(mlops_env):
    """Actions and outcomes are added over time (``canary``, ``lock_takeover``), and a ledger is
    shared by every job and host, which do not all run the same release: an older mlops read a
    newer one's row as a traceback (`registry history`, and every read of that row). Rows are
    checked when written, and read back as they are."""
    led = Ledger()
    led.record("register", "alpha", outcome="ok", to_version=1, actor="ci")
    db = sqlite3.connect(led._engine.url.database)
    db.execute("INSERT INTO ledger_entries (at, action, model, to_version, actor, outcome) VALUES "
               "('2026-12-07 00:00:00.000000', 'retire', 'alpha', 1, 'ci', 'retired')")
    db.commit()
    db.close()
    assert [(e.action, e.outcome) for e in led.entries("alpha")] == [("register", "ok"), ("retire", "retired")]
    r = run_mlops("registry", "history", "--model", "alpha")
    assert r.returncode == 0 and "retire" in r.stdout and "retired" in r.stdout, r.stderr
    with pytest.raises(ValueError, match="unknown ledger action"):
        led.record("retire", "alpha", outcome="ok")


def bounded_reads_agree(url: str, monkeypatch, model: str = "bounded") -> None:
    """Seed a model with 5,000 old deploy rows, then moves and deploys since; every replay read of
    ``registry.deploys`` must give what its rule gives on every row, reading (``_from_row``) only
    the rows since the move it decides on. Shared with the PostgreSQL test."""
    import registry.ledger as ledger_mod
    from registry import deploys
    from registry import promotion_rules as rules

    led = Ledger(url)
    monkeypatch.setenv("MLOPS_LEDGER_URL", url)
    monkeypatch.setattr(ledger_mod, "model_created_ms", lambda m: None)   # no MLflow here: the ledger decides
    rows = [Entry("register", model, "ok", to_version=v) for v in (1, 2, 3)]
    rows.append(Entry("promote", model, "ok", to_version=1))
    rows += [Entry("deploy", model, "ok", to_version=1, host=f"h{i}") for i in range(5000)]
    rows += [Entry("promote", model, "ok", from_version=1, to_version=2),
             Entry("deploy", model, "ok", to_version=2, host="h0", details={"final": True}),
             Entry("promote", model, "ok", from_version=2, to_version=3),
             Entry("deploy", model, "failed", to_version=3, host="h0"),
             Entry("rollback", model, "ok", from_version=3, to_version=2),
             Entry("promote", model, "refused", from_version=2, to_version=3),
             Entry("promote", model, "ok", from_version=2, to_version=2)]      # a rerun: moved nothing
    led.append_all(rows)
    everything = led.entries(model, actions=("promote", "rollback", "deploy"), current=True)
    moves = [e for e in everything if e.action in ("promote", "rollback")]
    monkeypatch.setattr(deploys, "status", lambda m, v: {3: "failed", 2: "deployed"}.get(v))

    fetched = []
    real = ledger_mod._from_row
    monkeypatch.setattr(ledger_mod, "_from_row", lambda r: fetched.append(1) or real(r))

    def read(call):
        fetched.clear()
        out = call()
        return out, len(fetched)

    for v in (2, 3):
        got, n = read(lambda: deploys.failed_since_promoted(model, v))
        want = (rules.failed_after_promotion if v == 3 else
                lambda e, x: rules.last_verdict(e, x) == "failed")(everything, v)
        assert got == want and n < 20, (v, got, want, n)
        got, n = read(lambda: deploys.last_move_to(model, v))
        assert got == max(e.id for e in moves if e.to_version == v and e.outcome == "ok") and n < 20, (v, n)
        got, n = read(lambda: deploys.rollback_unrecorded(model, v))
        want = rules.rollback_in_rollout(everything, v) or (
            rules.rolled_back_to(everything, v) if v == 2 else None)
        assert got == want and n < 20, (v, got, want, n)
        got, n = read(lambda: deploys.rolled_back_from(model, v))
        assert got == rules.rolled_back_to(moves, v) and n < 20, (v, n)
    assert deploys.rollback_unrecorded(model, 2).to_version == 2
    got, n = read(lambda: deploys.restoring(model, 3))
    assert got is None and n < 20, n
    assert deploys.restoring(model, 2) == rules.restoring_rollback(everything, 2)
    got, n = read(lambda: deploys.rolled_back_before(model, 3))
    assert got == [] and n < 20, n
    assert deploys.rolled_back_before(model, 2) == rules.rolled_back_before(moves, 2)
    assert deploys.DeployLedger(model, led).rollback_in_rollout(2) == rules.rollback_in_rollout(everything, 2)

    # a put-back after the move, of a deploy that began before it: its verdict goes back to what
    # that deploy's first row found (read from the start again), not to the move
    other, run = f"{model}-put-back", {"deploy": "r1"}
    led.append_all([Entry("register", other, "ok", to_version=1),
                    Entry("deploy", other, "failed", to_version=1, host="h0", details=run),
                    Entry("promote", other, "ok", to_version=1),
                    Entry("deploy", other, "failed", to_version=1, host="h0",
                          details={**run, "registry_unchanged": True, "switched_put_back": True})])
    monkeypatch.setattr(deploys, "status", lambda m, v: "failed")
    assert deploys.failed_since_promoted(other, 1) is rules.failed_after_promotion(led.entries(other), 1) is True


def test_replay_reads_of_a_long_history_read_only_the_rows_since_the_move(ledger_url, monkeypatch):
    """Found by a review (2026-12-07, eighteenth stop): ``registry.deploys``' replay reads
    (``failed_since_promoted``, ``last_move_to``, ``rollback_unrecorded``, ...) read every move and
    deploy row of the model at every call; a ``sync watch`` asks them at every pass, for months.
    Now each reads from the move its rule decides on (found by the database from the newest end of
    the model's (model, id) index), with the same answers."""
    bounded_reads_agree(ledger_url, monkeypatch)
