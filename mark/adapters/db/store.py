"""What every part of the gateway stands on: a session factory over one engine."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

__all__ = [
    "Store",
    "chunked",
]

# Ids bound in one `IN (...)`: well under the bound parameters one statement may carry
# (PostgreSQL's protocol: 32,767; SQLite's default since 3.32: 32,766), so a fleet of
# thousands is one statement, and a larger one a statement per this many.
IN_LIST_MAX = 5000


def chunked(ids: Sequence[str], size: int = IN_LIST_MAX) -> Iterator[Sequence[str]]:
    """`ids` in slices of at most `size`, for statements that bind each one."""
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


class Store:
    """Holds the engine and hands out sessions; the gateway's parts (models, fleet, decisions,
    costs) each add their methods on top of it."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    def session(self) -> AsyncSession:
        return self._sessions()
