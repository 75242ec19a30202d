"""The cost ledger: what each instance has cost so far (one row per instance, overwritten as it
runs), the part of it each model it served bears (one row per instance and model, by busy
time: `billing.split_charge`) and each batch of serverless requests (appended)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import delete, func, select
from sqlalchemy import insert as sa_insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from mark.adapters.db.store import Store, chunked
from mark.adapters.db.tables import (
    InstanceChargeRow,
    InstanceModelChargeRow,
    ServerlessChargeRow,
)

__all__ = [
    "CostSummary",
    "CostLedger",
    "InstanceCharge",
    "LedgerLine",
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
class LedgerLine:
    """What the ledger writes for one instance: which it is, and its cumulative charge. `model`
    is its first model, the line's own column (`charge.models` shares the dollars out)."""

    instance_id: str
    model: str
    instance_type: str
    market: str
    charge: InstanceCharge


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

    async def set_instance_charges(self, lines: Sequence[LedgerLine], at_s: float) -> None:
        """Write each line's cumulative charge and its parts per model (no parts: all of it is
        the line's `model`'s), replacing what was written for those instances before: three
        statements for the whole fleet, however many instances the sync charges."""
        if not lines:
            return
        ids = [line.instance_id for line in lines]
        parts = [
            {"instance_id": line.instance_id, "model": m, "usd": c.usd, "busy_s": c.busy_s}
            for line in lines
            for m, c in (line.charge.models or {line.model: ModelCharge(line.charge.usd)}).items()
        ]
        heads = [
            {
                "instance_id": line.instance_id,
                "model": line.model,
                "instance_type": line.instance_type,
                "market": line.market,
                "seconds": line.charge.seconds,
                "usd": line.charge.usd,
                "updated_at_s": at_s,
            }
            for line in lines
        ]
        insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        upsert = insert(InstanceChargeRow)
        upsert = upsert.on_conflict_do_update(
            index_elements=[InstanceChargeRow.instance_id],
            set_={k: upsert.excluded[k] for k in heads[0] if k != "instance_id"},
        )
        async with self.session() as s:
            for chunk in chunked(ids):
                await s.execute(
                    delete(InstanceModelChargeRow).where(
                        InstanceModelChargeRow.instance_id.in_(chunk)
                    )
                )
            await s.execute(sa_insert(InstanceModelChargeRow), parts)
            await s.execute(upsert, heads)
            await s.commit()

    async def instance_charges(self, instance_ids: Sequence[str]) -> dict[str, InstanceCharge]:
        """The lines of these instances as last written, by id (none yet: absent), with their
        parts: one query for the whole fleet."""
        out: dict[str, InstanceCharge] = {}
        async with self.session() as s:
            for chunk in chunked(instance_ids):
                rows = await s.execute(
                    select(
                        InstanceChargeRow.instance_id,
                        InstanceChargeRow.seconds,
                        InstanceChargeRow.usd,
                        InstanceModelChargeRow.model,
                        InstanceModelChargeRow.usd,
                        InstanceModelChargeRow.busy_s,
                    )
                    .outerjoin(
                        InstanceModelChargeRow,
                        InstanceModelChargeRow.instance_id == InstanceChargeRow.instance_id,
                    )
                    .where(InstanceChargeRow.instance_id.in_(chunk))
                )
                for instance_id, seconds, usd, model, part_usd, busy_s in rows.all():
                    line = out.setdefault(instance_id, InstanceCharge(seconds, usd))
                    if model is not None:
                        line.models[model] = ModelCharge(part_usd, busy_s)
        return out

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
