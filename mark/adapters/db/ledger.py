"""The cost ledger: what each instance has cost so far (one row per instance, overwritten as it
runs), the part of it each model it served bears (one row per instance and model, by busy
time: `billing.split_charge`) and each batch of serverless requests (appended)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy import delete, func, select

from mark.adapters.db.store import Store
from mark.adapters.db.tables import (
    InstanceChargeRow,
    InstanceModelChargeRow,
    ServerlessChargeRow,
)

__all__ = [
    "CostSummary",
    "CostLedger",
    "InstanceCharge",
    "ModelCharge",
]


@dataclass(frozen=True, slots=True)
class ModelCharge:
    """One model's part of an instance's cumulative charge, and the busy seconds shared so far
    (the next period shares only the busy time past them)."""

    usd: float
    busy_s: float = 0.0


@dataclass(frozen=True, slots=True)
class InstanceCharge:
    """An instance's ledger line as last written: billed seconds, dollars, and their parts."""

    seconds: float
    usd: float
    models: dict[str, ModelCharge] = field(default_factory=dict)


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
        parts: Mapping[str, ModelCharge] | None = None,
    ) -> None:
        """Write an instance's cumulative charge and its parts per model (None: all of it is
        `model`'s), replacing what was written for it before."""
        shares = {model: ModelCharge(usd)} if parts is None else parts
        async with self.session() as s:
            await s.execute(
                delete(InstanceModelChargeRow).where(
                    InstanceModelChargeRow.instance_id == instance_id
                )
            )
            s.add_all(
                InstanceModelChargeRow(
                    instance_id=instance_id, model=m, usd=share.usd, busy_s=share.busy_s
                )
                for m, share in shares.items()
            )
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

    async def instance_charge(self, instance_id: str) -> InstanceCharge | None:
        """The instance's line as last written; None before its first."""
        async with self.session() as s:
            row = await s.get(InstanceChargeRow, instance_id, populate_existing=True)
            if row is None:
                return None
            parts = (
                await s.execute(
                    select(InstanceModelChargeRow).where(
                        InstanceModelChargeRow.instance_id == instance_id
                    )
                )
            ).scalars()
            return InstanceCharge(
                seconds=row.seconds,
                usd=row.usd,
                models={p.model: ModelCharge(p.usd, p.busy_s) for p in parts},
            )

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
                        InstanceChargeRow.instance_type, func.sum(InstanceChargeRow.usd)
                    ).group_by(InstanceChargeRow.instance_type)
                )
            ).all()
            by_model = (
                await s.execute(
                    select(
                        InstanceModelChargeRow.model, func.sum(InstanceModelChargeRow.usd)
                    ).group_by(InstanceModelChargeRow.model)
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
        for itype, usd in inst:
            usd = float(usd or 0.0)
            per_type[itype] = per_type.get(itype, 0.0) + usd
            instances_usd += usd
        for model, usd in by_model:
            per_model[model] = per_model.get(model, 0.0) + float(usd or 0.0)
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
