"""Persistence: SQLAlchemy 2.x async over SQLite (default) or PostgreSQL, migrated by Alembic."""

from mark.adapters.db.database import CostSummary, Database

__all__ = ["Database", "CostSummary"]
