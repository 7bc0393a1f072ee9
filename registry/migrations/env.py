"""Alembic environment for the ledger.

Run programmatically by ``registry.ledger`` with an open connection in
``config.attributes["connection"]`` (already inside a locked transaction), so migrations
of two processes starting at once are serialized. The version table has its own name so the
ledger can share a database with MLflow (which uses ``alembic_version``).
"""
from __future__ import annotations

from alembic import context

VERSION_TABLE = "ledger_alembic_version"

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - only when a developer runs the alembic CLI by hand
    from sqlalchemy import create_engine

    from mlops_common import settings

    engine = create_engine(config.get_main_option("sqlalchemy.url") or settings.ledger_url())
    connection = engine.connect()

context.configure(connection=connection, target_metadata=None,
                  version_table=config.attributes.get("version_table", VERSION_TABLE))
with context.begin_transaction():
    context.run_migrations()
