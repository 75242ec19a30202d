"""The decision log: every action the planner took, with its reason and expected cost."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select

from mark.adapters.db.leadership import Fence, check_fence
from mark.adapters.db.rows import decision_from_row
from mark.adapters.db.store import Store
from mark.adapters.db.tables import DecisionRow
from mark.core.types import Decision

__all__ = [
    "DecisionLog",
]


class DecisionLog(Store):
    """Append decisions; read them newest first, a page at a time."""

    async def add_decisions(
        self, decisions: Sequence[Decision], *, fence: Fence | None = None
    ) -> None:
        """Append; with a `fence`, only while its lease and term hold (`Fenced` otherwise),
        and each row records the term it was written in."""
        if not decisions:
            return
        async with self.session() as s:
            await check_fence(s, fence)
            s.add_all(
                DecisionRow(
                    at_s=d.at_s,
                    action=d.action.value,
                    reason=d.reason,
                    model=d.model,
                    instance_id=d.instance_id,
                    offering_key=d.offering_key,
                    expected_cost_usd=d.expected_cost_usd,
                    forecast_upper_rps=list(d.forecast_upper_rps),
                    term=d.term if fence is None else fence.term,
                )
                for d in decisions
            )
            await s.commit()

    async def list_decisions(
        self, *, limit: int = 50, offset: int = 0, model: str | None = None
    ) -> tuple[list[Decision], int]:
        """Newest first, with the total count for paging."""
        query = select(DecisionRow)
        count = select(func.count()).select_from(DecisionRow)
        if model is not None:
            query = query.where(DecisionRow.model == model)
            count = count.where(DecisionRow.model == model)
        query = query.order_by(DecisionRow.at_s.desc(), DecisionRow.id.desc())
        async with self.session() as s:
            total = int((await s.execute(count)).scalar_one())
            rows = (await s.scalars(query.limit(limit).offset(offset))).all()
        return [decision_from_row(r) for r in rows], total
