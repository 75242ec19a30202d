"""The fleet: instance types, the offerings in force, and instances with the audit trail of
their state transitions."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from sqlalchemy import JSON, Text, cast, delete, select

from mark.adapters.db.leadership import Fence, check_fence
from mark.adapters.db.rows import instance_from_row
from mark.adapters.db.store import Store
from mark.adapters.db.tables import InstanceRow, InstanceTypeRow, OfferingRow, TransitionRow
from mark.core.errors import NotFound
from mark.core.types import Instance, InstanceState, InstanceType, Offering

__all__ = [
    "FleetStore",
]

# The instance columns as the listing reads them: the JSON ones as their text, decoded only for
# a row that changed (a thousand model names a row, twenty rows twice a second, were most of a
# front end's fleet sync to decode and compare).
_JSON_COLUMNS = frozenset(c.key for c in InstanceRow.__table__.columns if isinstance(c.type, JSON))
_INSTANCE_COLUMNS = tuple(
    cast(c, Text).label(c.key) if c.key in _JSON_COLUMNS else c
    for c in InstanceRow.__table__.columns
)


class FleetStore(Store):
    """Instance types, offerings and instances.

    `list_instances` hands back the very `Instance` it built last time for a row that did
    not change (its columns as stored, the JSON ones as text, equal): every front-end process
    lists the instances on each fleet sync (twice a second), an instance of a many-model fleet
    lists a thousand models, and the front end then compares the listing with its last one
    (by identity first) instead of decoding, building and comparing twenty thousand names
    anew."""

    # id -> (the row's column values as read, the Instance built from them), last listing
    _built: dict[str, tuple[tuple[object, ...], Instance]] | None = None

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

    async def save_instance(self, instance: Instance, *, fence: Fence | None = None) -> None:
        """Upsert; a change of state also appends a transition row (the audit trail). With a
        `fence`, only while its lease and term hold (`Fenced` otherwise)."""
        async with self.session() as s:
            await check_fence(s, fence)
            row = await s.get(InstanceRow, instance.id)
            previous = row.state if row is not None else None
            values = {
                "offering": instance.offering.model_dump(mode="json"),
                "instance_type": instance.offering.instance_type,
                "market": instance.offering.market.value,
                "models": list(instance.models),
                "placed_models": (
                    None if instance.placed_models is None else list(instance.placed_models)
                ),
                "draining_models": list(instance.draining_models),
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
        return instance_from_row(row)

    async def list_instances(
        self, *, live_only: bool = True, model: str | None = None
    ) -> list[Instance]:
        query = select(*_INSTANCE_COLUMNS).order_by(InstanceRow.launched_at_s, InstanceRow.id)
        if live_only:
            query = query.where(InstanceRow.state != InstanceState.TERMINATED.value)
        async with self.session() as s:
            rows = (await s.execute(query)).all()
        built = self._built if self._built is not None else {}
        instances = []
        for row in rows:
            values = tuple(row)
            known = built.get(row.id)
            if known is None or known[0] != values:
                decoded = {
                    k: json.loads(v) if k in _JSON_COLUMNS and v is not None else v
                    for k, v in row._mapping.items()
                }
                known = built[row.id] = (values, instance_from_row(InstanceRow(**decoded)))
            instances.append(known[1])
        if live_only:  # what is not live now is not kept (a full listing builds it again)
            listed = {r.id for r in rows}
            built = {k: v for k, v in built.items() if k in listed}
        self._built = built
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
