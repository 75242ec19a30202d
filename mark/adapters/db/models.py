"""Registered models, with their SLO, backend and profiles; NotFound and Conflict by name."""

from __future__ import annotations

import time

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from mark.adapters.db.rows import model_from_rows, profile_rows
from mark.adapters.db.store import Store
from mark.adapters.db.tables import ModelRow, ProfileRow
from mark.core.errors import Conflict, NotFound
from mark.core.types import Model

__all__ = [
    "ModelStore",
]


class ModelStore(Store):
    """Create, read, update and delete registered models."""

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
            s.add_all(profile_rows(model))
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
            return model_from_rows(row, profiles)

    async def list_models(self) -> list[Model]:
        async with self.session() as s:
            rows = (await s.scalars(select(ModelRow).order_by(ModelRow.name))).all()
            profiles = (await s.scalars(select(ProfileRow))).all()
        by_model: dict[str, list[ProfileRow]] = {}
        for p in profiles:
            by_model.setdefault(p.model_name, []).append(p)
        return [model_from_rows(r, by_model.get(r.name, [])) for r in rows]

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
            s.add_all(profile_rows(model))
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
