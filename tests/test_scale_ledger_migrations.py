"""The ledger's schema upgrades keep every row, on SQLite and PostgreSQL.

Today the ledger has one revision (0001), so two things are tested for real:
- re-running the migrations on a ledger at head changes nothing and keeps every row (also from
  a second process, as every CLI call does on first use);
- a later release's revision 0002 (the example below, in a copy of registry/migrations, written
  the way docs/production.md says to write one) upgrades a ledger created at 0001 with rows in
  it: rows kept, append-only triggers still enforced, and an older release refuses the newer
  ledger with one line instead of writing to it.
"""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import sqlalchemy as sa

from mlops_common.errors import ConfigError
from registry import ledger_db as ledger_db_mod
from registry.ledger import Ledger
from registry.ledger_db import VERSION_TABLE
from tests.helpers import REPO

# How a later release adds a column: plain ADD COLUMN (nullable), no batch mode. On SQLite,
# op.batch_alter_table would copy the table into a new one and drop the append-only triggers.
EXAMPLE_0002 = '''"""Add ledger_entries.tool_version: which tfmodel-delivery release wrote the row.

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("ledger_entries", sa.Column("tool_version", sa.String(32), nullable=True))


def downgrade() -> None:
    raise NotImplementedError("the ledger is append-only: migrations only go forward")
'''


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_db(request, tmp_path):
    """URL of a new, empty ledger database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return request.getfixturevalue("postgres_server").create_database("ledger_mig")


@pytest.fixture
def fresh_engines(monkeypatch):
    """Forget engines (and so migration checks) cached by earlier Ledger() calls in this process."""
    monkeypatch.setattr(ledger_db_mod, "_engines", {})


def next_release_migrations(tmp_path) -> str:
    """registry/migrations as a later release would ship it: plus revision 0002."""
    dest = tmp_path / "migrations-next"
    shutil.copytree(ledger_db_mod.MIGRATIONS_DIR, dest, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "versions" / "0002_tool_version.py").write_text(EXAMPLE_0002)
    return str(dest)


def write_rows(url: str, n: int = 5) -> list:
    led = Ledger(url)
    for i in range(n):
        led.record("promote", "m-mig", outcome="ok", from_version=i or None, to_version=i + 1,
                   actor=f"user-{i}", reason=f"step {i}", details={"i": i})
    return led.entries("m-mig")


def schema(url: str) -> tuple[list, set[str]]:
    """(rows of the version table, columns of ledger_entries), read directly."""
    engine = ledger_db_mod._create_engine(url)
    try:
        with engine.connect() as conn:
            version = conn.exec_driver_sql(f"select version_num from {VERSION_TABLE}").all()
            cols = {c["name"] for c in sa.inspect(conn).get_columns("ledger_entries")}
        return version, cols
    finally:
        engine.dispose()


def assert_append_only(url: str) -> None:
    engine = ledger_db_mod._create_engine(url)
    try:
        for stmt in ("update ledger_entries set actor = 'mallory'", "delete from ledger_entries"):
            with pytest.raises(sa.exc.DBAPIError, match="append-only"):
                with engine.begin() as conn:
                    conn.exec_driver_sql(stmt)
    finally:
        engine.dispose()


def test_rerunning_the_migrations_keeps_every_row(ledger_db, fresh_engines):
    from alembic import command
    from alembic.config import Config

    rows = write_rows(ledger_db)
    # another process opens the same ledger: its first use checks the schema again
    code = ("import sys; from registry.ledger import Ledger; "
            "print(len(Ledger(sys.argv[1]).entries('m-mig')))")
    p = subprocess.run([sys.executable, "-c", code, ledger_db], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "5", p.stderr
    # and Alembic's upgrade to head, run explicitly once more, is a no-op
    cfg = Config()
    cfg.set_main_option("script_location", str(ledger_db_mod.MIGRATIONS_DIR))
    cfg.attributes["version_table"] = VERSION_TABLE
    engine = ledger_db_mod._create_engine(ledger_db)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    engine.dispose()
    ledger_db_mod._engines.clear()
    assert Ledger(ledger_db).entries("m-mig") == rows
    assert schema(ledger_db)[0] == [("0001",)]
    assert_append_only(ledger_db)


def test_a_later_revision_upgrades_a_ledger_with_rows_and_keeps_them(ledger_db, fresh_engines, tmp_path,
                                                                     monkeypatch):
    rows = write_rows(ledger_db)                       # created by this release, at 0001
    version, cols = schema(ledger_db)
    assert version == [("0001",)] and "tool_version" not in cols

    # the next release opens it: migrated on first use, rows untouched
    monkeypatch.setattr(ledger_db_mod, "MIGRATIONS_DIR", next_release_migrations(tmp_path))
    ledger_db_mod._engines.clear()
    led = Ledger(ledger_db)
    version, cols = schema(ledger_db)
    assert version == [("0002",)] and "tool_version" in cols
    assert led.entries("m-mig") == rows
    assert_append_only(ledger_db)                      # the triggers survived the ALTER TABLE
    led.record("rollback", "m-mig", outcome="ok", from_version=5, to_version=4, actor="bob")
    assert [e.to_version for e in led.entries("m-mig")] == [1, 2, 3, 4, 5, 4]
    ledger_db_mod._engines.clear()
    assert len(Ledger(ledger_db).entries("m-mig")) == 6     # idempotent at the new head too

    # a job still running the older release refuses the newer ledger instead of writing to it
    monkeypatch.setattr(ledger_db_mod, "MIGRATIONS_DIR", REPO / "registry" / "migrations")
    ledger_db_mod._engines.clear()
    with pytest.raises(ConfigError, match="schema revision 0002, which this version of tfmodel-delivery "
                                          "does not know"):
        Ledger(ledger_db)


def test_a_least_privilege_role_can_use_a_migrated_ledger(postgres_server, fresh_engines):
    """docs/production.md: once migrated, the ledger needs only SELECT/INSERT (and its sequence)."""
    import secrets
    import uuid

    from registry.ledger import Entry

    url = postgres_server.create_database("ledger_role")
    write_rows(url, 1)                                  # the owner migrates it
    db = url.rsplit("/", 1)[1]
    role, password = f"ledger_writer_{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(12)
    conn = postgres_server.connect(db)
    cur = conn.cursor()
    cur.execute(f"CREATE ROLE {role} LOGIN PASSWORD %s", (password,))
    cur.execute(f"GRANT SELECT ON {VERSION_TABLE} TO {role}")
    cur.execute(f"GRANT SELECT, INSERT ON ledger_entries TO {role}")
    cur.execute(f"GRANT USAGE ON SEQUENCE ledger_entries_id_seq TO {role}")
    conn.close()
    role_url = f"postgresql://{role}:{password}@{postgres_server.host}:{postgres_server.port}/{db}"
    led = Ledger(role_url)
    with led.serialized("m-mig") as tx:                 # the promotion lock works for it too
        tx.append(Entry("promote", "m-mig", "ok", from_version=1, to_version=2, actor="ci"))
    assert [e.to_version for e in led.entries("m-mig")] == [1, 2]
    engine = ledger_db_mod._create_engine(role_url)
    try:                                                # and it may not change rows at all
        with pytest.raises(sa.exc.DBAPIError, match="permission denied for table ledger_entries"):
            with engine.begin() as c:
                c.exec_driver_sql("update ledger_entries set actor = 'mallory'")
    finally:
        engine.dispose()
