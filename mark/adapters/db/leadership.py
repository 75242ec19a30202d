"""Several `mark serve` processes on one PostgreSQL database: exactly one runs the control loop
(the holder of the `control` lease), and every front end's observed request counts reach it.

The lease is a row with a holder, a term and an expiry, taken by one conditional UPDATE (the
holder renews it; anyone takes it once it has run out), so two processes racing for it cannot
both win: the database serialises the two updates and the second finds the row no longer
matching. The term goes up at every change of holder. It fences the leader's writes: a write
given a `Fence` locks the lease row (`SELECT ... FOR UPDATE` on PostgreSQL; SQLite serialises
writers anyway) and is refused with `Fenced` unless the lease still names that holder and term,
so a leader that was paused past its lease (a GC pause, a partition) and wakes up to apply an
old plan cannot record it after the new leader took over. Cloud calls cannot be fenced by the
database; the control loop renews, and so checks, its lease right before it acts.

Observed counts: each front end adds what it saw per model and forecast bucket under its own
host name (an upsert that adds); the leader reads the totals over hosts. Busy time likewise:
the seconds each front end's batches were in service per instance and model, by which the
leader shares an instance's charge among its models (`billing.split_charge`); they are dropped
once the instance's final charge is written (`forget_busy`, on the charge cadence).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from mark.adapters.db.store import Store, chunked
from mark.adapters.db.tables import (
    InstanceChargeRow,
    InstanceRow,
    LeaseRow,
    ObservedBusyRow,
    ObservedCountRow,
)
from mark.core.errors import Fenced

__all__ = ["Lease", "Fence", "Leadership", "check_fence"]

CONTROL_LEASE = "control"


@dataclass(frozen=True, slots=True)
class Lease:
    """The lease as read: who holds it, in which term, until when."""

    name: str
    holder: str
    term: int
    expires_at_s: float


@dataclass(frozen=True, slots=True)
class Fence:
    """What a leader's write carries: the lease it acts under and its term there."""

    holder: str
    term: int
    name: str = CONTROL_LEASE


async def check_fence(session: AsyncSession, fence: Fence | None) -> None:
    """Inside a write's transaction: lock the lease row and refuse the write (`Fenced`) unless
    it still names the fence's holder and term. None: an unfenced write (a single process)."""
    if fence is None:
        return
    row = (
        await session.execute(
            select(LeaseRow.holder, LeaseRow.term)
            .where(LeaseRow.name == fence.name)
            .with_for_update()
        )
    ).first()
    if row is None or (row.holder, row.term) != (fence.holder, fence.term):
        now = "nobody" if row is None else f"{row.holder} in term {row.term}"
        raise Fenced(
            f"lease {fence.name!r} is held by {now}, not {fence.holder} in term "
            f"{fence.term}: this process is no longer the leader, its write is refused"
        )


class Leadership(Store):
    """The control loop's lease and the front ends' observed counts."""

    async def acquire_lease(
        self, holder: str, now_s: float, ttl_s: float, name: str = CONTROL_LEASE
    ) -> Lease | None:
        """Take or renew the lease for `ttl_s`; the lease when `holder` has it now, else None.
        A renewal keeps the term; taking it from an expired holder raises it."""
        expires = now_s + ttl_s
        async with self.session() as s:
            result = await s.execute(
                update(LeaseRow)
                .where(
                    and_(
                        LeaseRow.name == name,
                        or_(LeaseRow.holder == holder, LeaseRow.expires_at_s < now_s),
                    )
                )
                .values(
                    term=func.coalesce(
                        select(LeaseRow.term)
                        .where(and_(LeaseRow.name == name, LeaseRow.holder == holder))
                        .scalar_subquery(),
                        LeaseRow.term + 1,
                    ),
                    holder=holder,
                    expires_at_s=expires,
                )
                .execution_options(synchronize_session=False)
            )
            if getattr(result, "rowcount", 0) == 1:
                await s.commit()
                return await self.lease(name)
            exists = await s.get(LeaseRow, name)
            if exists is not None:
                await s.rollback()
                return None
            s.add(LeaseRow(name=name, holder=holder, term=1, expires_at_s=expires))
            try:
                await s.commit()
            except IntegrityError:  # another process created it first: it holds it
                await s.rollback()
                return None
        return Lease(name, holder, 1, expires)

    async def release_lease(self, holder: str, name: str = CONTROL_LEASE) -> None:
        """Give the lease up at once (a clean shutdown), so a follower need not wait it out."""
        async with self.session() as s:
            await s.execute(
                update(LeaseRow)
                .where(and_(LeaseRow.name == name, LeaseRow.holder == holder))
                .values(expires_at_s=0.0)
            )
            await s.commit()

    async def lease(self, name: str = CONTROL_LEASE) -> Lease | None:
        async with self.session() as s:
            row = await s.get(LeaseRow, name, populate_existing=True)
            if row is None:
                return None
            return Lease(row.name, row.holder, row.term, row.expires_at_s)

    async def add_observed(
        self, host: str, bucket_start_s: float, counts: Mapping[str, float]
    ) -> None:
        """Add `counts` (requests per model) to this host's row of the bucket."""
        rows = [
            {"host": host, "model": m, "bucket_start_s": bucket_start_s, "requests": float(n)}
            for m, n in sorted(counts.items())
            if n > 0
        ]
        await self._add_to(ObservedCountRow, rows, ("host", "model", "bucket_start_s"), "requests")

    async def add_busy(self, host: str, busy_s: Mapping[tuple[str, str], float]) -> None:
        """Add `busy_s` (seconds in service per instance id and model) to this host's rows."""
        rows = [
            {"host": host, "instance_id": i, "model": m, "seconds": float(s)}
            for (i, m), s in sorted(busy_s.items())
            if s > 0
        ]
        await self._add_to(ObservedBusyRow, rows, ("host", "instance_id", "model"), "seconds")

    async def _add_to(
        self, table: Any, rows: list[dict[str, Any]], key: tuple[str, ...], column: str
    ) -> None:
        """Insert `rows`, or add their `column` to the rows already there with the same `key`
        (one statement: front ends on several hosts add to their own rows concurrently)."""
        if not rows:
            return
        insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        statement = insert(table).values(rows)
        statement = statement.on_conflict_do_update(
            index_elements=list(key),
            set_={column: getattr(table, column) + getattr(statement.excluded, column)},
        )
        async with self.session() as s:
            await s.execute(statement)
            await s.commit()

    async def busy_by_instance(self, instance_ids: Sequence[str]) -> dict[str, dict[str, float]]:
        """Seconds each instance had batches of each model in service, summed over hosts, by
        instance id (none recorded: absent): one query for the whole fleet."""
        out: dict[str, dict[str, float]] = {}
        async with self.session() as s:
            for chunk in chunked(instance_ids):
                query = (
                    select(
                        ObservedBusyRow.instance_id,
                        ObservedBusyRow.model,
                        func.sum(ObservedBusyRow.seconds),
                    )
                    .where(ObservedBusyRow.instance_id.in_(chunk))
                    .group_by(ObservedBusyRow.instance_id, ObservedBusyRow.model)
                )
                for instance_id, model, seconds in (await s.execute(query)).all():
                    out.setdefault(instance_id, {})[model] = float(seconds)
        return out

    async def forget_busy(self, terminated_before_s: float) -> int:
        """Drop the busy rows no charge will read again: those of terminated instances whose
        final ledger line is written (at or after their termination), and those of instances
        terminated before `terminated_before_s` with none (the ledger charges live instances,
        and a terminated one once, as it ends). A live instance keeps its rows: they are the
        cumulative counters its next charge differences. A front end's busy time published
        after the final charge is dropped by the next call. How many rows went."""
        final = (
            select(InstanceRow.id)
            .outerjoin(InstanceChargeRow, InstanceChargeRow.instance_id == InstanceRow.id)
            .where(
                InstanceRow.id == ObservedBusyRow.instance_id,
                InstanceRow.terminated_at_s.is_not(None),
                or_(
                    InstanceChargeRow.updated_at_s >= InstanceRow.terminated_at_s,
                    InstanceRow.terminated_at_s < terminated_before_s,
                ),
            )
        )
        async with self.session() as s:
            result = await s.execute(delete(ObservedBusyRow).where(final.exists()))
            await s.commit()
        return int(getattr(result, "rowcount", 0) or 0)

    async def observed_totals(self) -> dict[str, float]:
        """Requests per model over every host and bucket kept: the cumulative counter the
        leader's forecasters difference, as they do one process's own counters."""
        query = select(ObservedCountRow.model, func.sum(ObservedCountRow.requests)).group_by(
            ObservedCountRow.model
        )
        async with self.session() as s:
            return {m: float(n) for m, n in (await s.execute(query)).all()}

    async def observed_by_bucket(self, since_s: float) -> dict[str, dict[float, float]]:
        """Requests per model and bucket start (summed over hosts) from `since_s` on."""
        query = (
            select(
                ObservedCountRow.model,
                ObservedCountRow.bucket_start_s,
                func.sum(ObservedCountRow.requests),
            )
            .where(ObservedCountRow.bucket_start_s >= since_s)
            .group_by(ObservedCountRow.model, ObservedCountRow.bucket_start_s)
        )
        out: dict[str, dict[float, float]] = {}
        async with self.session() as s:
            for model, start, total in (await s.execute(query)).all():
                out.setdefault(model, {})[float(start)] = float(total)
        return out

    async def forget_observed(self, before_s: float) -> int:
        """Drop counts of buckets that started before `before_s`; how many rows went."""
        async with self.session() as s:
            result = await s.execute(
                delete(ObservedCountRow).where(ObservedCountRow.bucket_start_s < before_s)
            )
            await s.commit()
        return int(getattr(result, "rowcount", 0) or 0)
