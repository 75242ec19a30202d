"""The cost ledger: what each instance has cost so far (one row per instance, overwritten as it
runs) and each batch of serverless requests (appended)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, select

from mark.adapters.db.store import Store
from mark.adapters.db.tables import InstanceChargeRow, ServerlessChargeRow

__all__ = [
    "CostSummary",
    "CostLedger",
]


@dataclass(frozen=True, slots=True)
class CostSummary:
    """Money spent so far, as `/admin/v1/costs` reports it."""

    total_usd: float
    instances_usd: float
    serverless_usd: float
    per_model_usd: dict[str, float] = field(default_factory=dict)
    per_instance_type_usd: dict[str, float] = field(default_factory=dict)
    serverless_requests: int = 0


class CostLedger(Store):
    """Record charges; sum them per model and per instance type."""

    async def set_instance_charge(
        self,
        *,
        instance_id: str,
        model: str,
        instance_type: str,
        market: str,
        seconds: float,
        usd: float,
        at_s: float,
    ) -> None:
        async with self.session() as s:
            await s.merge(
                InstanceChargeRow(
                    instance_id=instance_id,
                    model=model,
                    instance_type=instance_type,
                    market=market,
                    seconds=seconds,
                    usd=usd,
                    updated_at_s=at_s,
                )
            )
            await s.commit()

    async def charge_serverless(
        self, *, model: str, requests: int, gb_seconds: float, usd: float, at_s: float, reason: str
    ) -> None:
        async with self.session() as s:
            s.add(
                ServerlessChargeRow(
                    at_s=at_s,
                    model=model,
                    requests=requests,
                    gb_seconds=gb_seconds,
                    usd=usd,
                    reason=reason,
                )
            )
            await s.commit()

    async def costs(self) -> CostSummary:
        async with self.session() as s:
            inst = (
                await s.execute(
                    select(
                        InstanceChargeRow.model,
                        InstanceChargeRow.instance_type,
                        func.sum(InstanceChargeRow.usd),
                    ).group_by(InstanceChargeRow.model, InstanceChargeRow.instance_type)
                )
            ).all()
            sls = (
                await s.execute(
                    select(
                        ServerlessChargeRow.model,
                        func.sum(ServerlessChargeRow.usd),
                        func.sum(ServerlessChargeRow.requests),
                    ).group_by(ServerlessChargeRow.model)
                )
            ).all()
        per_model: dict[str, float] = {}
        per_type: dict[str, float] = {}
        instances_usd = 0.0
        for model, itype, usd in inst:
            usd = float(usd or 0.0)
            per_model[model] = per_model.get(model, 0.0) + usd
            per_type[itype] = per_type.get(itype, 0.0) + usd
            instances_usd += usd
        serverless_usd = 0.0
        serverless_requests = 0
        for model, usd, requests in sls:
            usd = float(usd or 0.0)
            per_model[model] = per_model.get(model, 0.0) + usd
            serverless_usd += usd
            serverless_requests += int(requests or 0)
        return CostSummary(
            total_usd=instances_usd + serverless_usd,
            instances_usd=instances_usd,
            serverless_usd=serverless_usd,
            per_model_usd=per_model,
            per_instance_type_usd=per_type,
            serverless_requests=serverless_requests,
        )
