"""The one gateway to the database: domain values in, domain values out.

Callers never see ORM rows; every method takes and returns `mark.core.types` values, so the admin
API, the control loop and the front end share one vocabulary. Errors are typed: NotFound for
unknown names, Conflict for duplicates.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import delete, func, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from mark.adapters.db.tables import (
    DecisionRow,
    InstanceChargeRow,
    InstanceRow,
    InstanceTypeRow,
    ModelRow,
    OfferingRow,
    ProfileRow,
    ServerlessChargeRow,
    TransitionRow,
)
from mark.core.errors import Conflict, InvalidValue, NotFound
from mark.core.types import (
    ActionKind,
    BackendSpec,
    Decision,
    Instance,
    InstanceState,
    InstanceType,
    Model,
    Offering,
    Profile,
    Slo,
)

__all__ = ["Database", "CostSummary", "migrate"]


@dataclass(frozen=True, slots=True)
class CostSummary:
    """Money spent so far, as `/admin/v1/costs` reports it."""

    total_usd: float
    instances_usd: float
    serverless_usd: float
    per_model_usd: dict[str, float] = field(default_factory=dict)
    per_instance_type_usd: dict[str, float] = field(default_factory=dict)
    serverless_requests: int = 0


def _alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(files("mark.adapters.db") / "migrations"))
    return cfg


def migrate(connection: Connection) -> None:
    """Bring the schema to the newest Alembic revision on an open connection."""
    cfg = _alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


def _model_from_rows(row: ModelRow, profiles: Sequence[ProfileRow]) -> Model:
    return Model(
        name=row.name,
        slo=Slo(latency_ms=row.slo_latency_ms, percentile=row.slo_percentile),
        backend=BackendSpec.model_validate(row.backend),
        max_batch=row.max_batch,
        profiles={
            p.instance_type: Profile(
                instance_type=p.instance_type,
                latency_ms={int(b): float(ms) for b, ms in p.latency_ms.items()},
                max_batch=p.max_batch,
                memory_mb=p.memory_mb,
                parallelism=p.parallelism,
                estimated=p.estimated,
                source=p.source,
            )
            for p in profiles
        },
    )


def _profile_rows(model: Model) -> list[ProfileRow]:
    return [
        ProfileRow(
            model_name=model.name,
            instance_type=p.instance_type,
            latency_ms={str(b): ms for b, ms in p.latency_ms.items()},
            max_batch=p.max_batch,
            memory_mb=p.memory_mb,
            parallelism=p.parallelism,
            estimated=p.estimated,
            source=p.source,
        )
        for p in model.profiles.values()
    ]


def _instance_from_row(row: InstanceRow) -> Instance:
    return Instance(
        id=row.id,
        offering=Offering.model_validate(row.offering),
        models=tuple(row.models),
        state=InstanceState(row.state),
        endpoint=row.endpoint,
        tags=dict(row.tags),
        launched_at_s=row.launched_at_s,
        running_at_s=row.running_at_s,
        draining_at_s=row.draining_at_s,
        terminated_at_s=row.terminated_at_s,
    )


def _decision_from_row(row: DecisionRow) -> Decision:
    return Decision(
        at_s=row.at_s,
        action=ActionKind(row.action),
        reason=row.reason,
        model=row.model,
        instance_id=row.instance_id,
        offering_key=row.offering_key,
        expected_cost_usd=row.expected_cost_usd,
        forecast_upper_rps=tuple(row.forecast_upper_rps),
    )


class Database:
    """Async access to Mark's tables. Open with `await Database.open(url)`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    @classmethod
    async def open(cls, url: str, *, echo: bool = False) -> Database:
        """Connect and migrate to the newest schema. SQLite files get WAL so that several
        processes (HTTP workers, the control plane) read while one writes."""
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
            await conn.run_sync(migrate)
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()

    def session(self) -> AsyncSession:
        return self._sessions()

    # -- models ---------------------------------------------------------------------------

    async def create_model(self, model: Model) -> Model:
        now = time.time()
        async with self.session() as s:
            if await s.get(ModelRow, model.name) is not None:
                raise Conflict(f"model {model.name!r} already exists")
            s.add(
                ModelRow(
                    name=model.name,
                    slo_latency_ms=model.slo.latency_ms,
                    slo_percentile=model.slo.percentile,
                    backend=model.backend.model_dump(),
                    max_batch=model.max_batch,
                    created_at_s=now,
                    updated_at_s=now,
                )
            )
            await s.flush()
            s.add_all(_profile_rows(model))
            try:
                await s.commit()
            except IntegrityError as exc:
                raise Conflict(f"model {model.name!r} already exists") from exc
        return model

    async def get_model(self, name: str) -> Model:
        async with self.session() as s:
            row = await s.get(ModelRow, name)
            if row is None:
                raise NotFound(f"model {name!r} is not registered")
            profiles = (
                await s.scalars(select(ProfileRow).where(ProfileRow.model_name == name))
            ).all()
            return _model_from_rows(row, profiles)

    async def list_models(self) -> list[Model]:
        async with self.session() as s:
            rows = (await s.scalars(select(ModelRow).order_by(ModelRow.name))).all()
            profiles = (await s.scalars(select(ProfileRow))).all()
        by_model: dict[str, list[ProfileRow]] = {}
        for p in profiles:
            by_model.setdefault(p.model_name, []).append(p)
        return [_model_from_rows(r, by_model.get(r.name, [])) for r in rows]

    async def update_model(self, model: Model) -> Model:
        async with self.session() as s:
            row = await s.get(ModelRow, model.name)
            if row is None:
                raise NotFound(f"model {model.name!r} is not registered")
            row.slo_latency_ms = model.slo.latency_ms
            row.slo_percentile = model.slo.percentile
            row.backend = model.backend.model_dump()
            row.max_batch = model.max_batch
            row.updated_at_s = time.time()
            await s.execute(delete(ProfileRow).where(ProfileRow.model_name == model.name))
            s.add_all(_profile_rows(model))
            await s.commit()
        return model

    async def delete_model(self, name: str) -> None:
        async with self.session() as s:
            row = await s.get(ModelRow, name)
            if row is None:
                raise NotFound(f"model {name!r} is not registered")
            await s.execute(delete(ProfileRow).where(ProfileRow.model_name == name))
            await s.delete(row)
            await s.commit()

    # -- instance types and offerings -----------------------------------------------------

    async def sync_instance_types(self, types: Sequence[InstanceType]) -> None:
        async with self.session() as s:
            for t in types:
                await s.merge(InstanceTypeRow(name=t.name, data=t.model_dump(mode="json")))
            await s.commit()

    async def list_instance_types(self) -> list[InstanceType]:
        async with self.session() as s:
            rows = (await s.scalars(select(InstanceTypeRow).order_by(InstanceTypeRow.name))).all()
        return [InstanceType.model_validate(r.data) for r in rows]

    async def replace_offerings(self, offerings: Sequence[Offering], at_s: float) -> None:
        async with self.session() as s:
            await s.execute(delete(OfferingRow))
            s.add_all(
                OfferingRow(
                    key=o.key,
                    instance_type=o.instance_type,
                    zone=o.zone,
                    market=o.market.value,
                    price_per_hour=o.price_per_hour,
                    available=o.available,
                    source=o.source,
                    updated_at_s=at_s,
                )
                for o in {o.key: o for o in offerings}.values()
            )
            await s.commit()

    async def list_offerings(self) -> list[Offering]:
        async with self.session() as s:
            rows = (await s.scalars(select(OfferingRow).order_by(OfferingRow.key))).all()
        return [
            Offering(
                instance_type=r.instance_type,
                zone=r.zone,
                market=r.market,  # type: ignore[arg-type]
                price_per_hour=r.price_per_hour,
                available=r.available,
                source=r.source,
            )
            for r in rows
        ]

    # -- instances ------------------------------------------------------------------------

    async def save_instance(self, instance: Instance) -> None:
        """Upsert; a change of state also appends a transition row (the audit trail)."""
        async with self.session() as s:
            row = await s.get(InstanceRow, instance.id)
            previous = row.state if row is not None else None
            values = {
                "offering": instance.offering.model_dump(mode="json"),
                "instance_type": instance.offering.instance_type,
                "market": instance.offering.market.value,
                "models": list(instance.models),
                "state": instance.state.value,
                "endpoint": instance.endpoint,
                "tags": dict(instance.tags),
                "launched_at_s": instance.launched_at_s,
                "running_at_s": instance.running_at_s,
                "draining_at_s": instance.draining_at_s,
                "terminated_at_s": instance.terminated_at_s,
            }
            if row is None:
                s.add(InstanceRow(id=instance.id, **values))
            else:
                for key, value in values.items():
                    setattr(row, key, value)
            if previous != instance.state.value:
                stamp = {
                    InstanceState.PENDING: instance.launched_at_s,
                    InstanceState.RUNNING: instance.running_at_s,
                    InstanceState.DRAINING: instance.draining_at_s,
                    InstanceState.TERMINATED: instance.terminated_at_s,
                }[instance.state]
                s.add(
                    TransitionRow(
                        instance_id=instance.id,
                        from_state=previous,
                        to_state=instance.state.value,
                        at_s=stamp if stamp is not None else time.time(),
                    )
                )
            await s.commit()

    async def get_instance(self, instance_id: str) -> Instance:
        async with self.session() as s:
            row = await s.get(InstanceRow, instance_id)
        if row is None:
            raise NotFound(f"instance {instance_id!r} is not known")
        return _instance_from_row(row)

    async def list_instances(
        self, *, live_only: bool = True, model: str | None = None
    ) -> list[Instance]:
        query = select(InstanceRow).order_by(InstanceRow.launched_at_s, InstanceRow.id)
        if live_only:
            query = query.where(InstanceRow.state != InstanceState.TERMINATED.value)
        async with self.session() as s:
            rows = (await s.scalars(query)).all()
        instances = [_instance_from_row(r) for r in rows]
        if model is not None:
            instances = [i for i in instances if model in i.models]
        return instances

    async def list_transitions(self, instance_id: str) -> list[tuple[str | None, str, float]]:
        async with self.session() as s:
            rows = (
                await s.scalars(
                    select(TransitionRow)
                    .where(TransitionRow.instance_id == instance_id)
                    .order_by(TransitionRow.id)
                )
            ).all()
        return [(r.from_state, r.to_state, r.at_s) for r in rows]

    # -- decisions ------------------------------------------------------------------------

    async def add_decisions(self, decisions: Sequence[Decision]) -> None:
        if not decisions:
            return
        async with self.session() as s:
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
        return [_decision_from_row(r) for r in rows], total

    # -- cost ledger ----------------------------------------------------------------------

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
