"""Persistence: SQLAlchemy 2.x async over SQLite (default) or PostgreSQL, migrated by Alembic."""

from mark.adapters.db.database import Database
from mark.adapters.db.leadership import Fence, Lease
from mark.adapters.db.ledger import CostSummary, InstanceCharge, LedgerLine, ModelCharge
from mark.adapters.db.schema import migrate

__all__ = [
    "Database",
    "CostSummary",
    "Fence",
    "InstanceCharge",
    "Lease",
    "LedgerLine",
    "ModelCharge",
    "migrate",
]
