"""What every part of the gateway stands on: a session factory over one engine."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

__all__ = [
    "Store",
]


class Store:
    """Holds the engine and hands out sessions; the gateway's parts (models, fleet, decisions,
    costs) each add their methods on top of it."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    def session(self) -> AsyncSession:
        return self._sessions()
