"""Alembic migrations of the ledger (run programmatically by ``registry.ledger`` on first use)."""
