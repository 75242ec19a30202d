"""The one gateway to the database: domain values in, domain values out.

Callers never see ORM rows; every method takes and returns `mark.core.types` values, so the admin
API, the control loop and the front end share one vocabulary. Errors are typed: NotFound for
unknown names, Conflict for duplicates.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import create_async_engine

from mark.adapters.db.decisions import DecisionLog
from mark.adapters.db.fleet import FleetStore
from mark.adapters.db.inference_keys import InferenceKeyStore
from mark.adapters.db.leadership import Leadership
from mark.adapters.db.ledger import CostLedger
from mark.adapters.db.models import ModelStore
from mark.adapters.db.schema import migrate
from mark.core.errors import InvalidValue

__all__ = ["Database"]

# The advisory lock that serialises migrations on PostgreSQL ("mark" in ASCII): front ends that
# start together on a fresh database (deploy/: two replicas of one Deployment) would otherwise
# create the same tables at once, and all but one fail.
_MIGRATION_LOCK = 0x6D61726B


class Database(ModelStore, FleetStore, DecisionLog, CostLedger, Leadership, InferenceKeyStore):
    """Async access to Mark's tables. Open with `await Database.open(url)`. Its methods come
    from one module per part: models, fleet, decisions, ledger, leadership, inference keys."""

    @classmethod
    async def open(cls, url: str, *, echo: bool = False) -> Database:
        """Connect and migrate to the newest schema. SQLite files get WAL so that several
        processes (HTTP workers, the control plane) read while one writes. On PostgreSQL one
        process migrates at a time, under a transaction-scoped advisory lock: the next finds the
        schema at the newest revision and has nothing to do."""
        if not url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise InvalidValue(
                "database.url",
                "must start with sqlite+aiosqlite:// or postgresql+asyncpg://, got " + url,
            )
        kwargs: dict[str, Any] = {"echo": echo}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30}
        engine = create_async_engine(url, **kwargs)
        if url.startswith("sqlite"):
            async with engine.connect() as conn:
                await conn.exec_driver_sql("PRAGMA journal_mode=WAL")
                await conn.commit()
        async with engine.begin() as conn:
            if url.startswith("postgresql"):
                await conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
            await conn.run_sync(migrate)
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()
