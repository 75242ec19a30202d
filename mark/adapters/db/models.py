"""Registered models, with their SLO, backend and profiles; NotFound and Conflict by name."""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence

from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import IntegrityError

from mark.adapters.db.rows import model_from_rows, model_values, profile_values
from mark.adapters.db.store import Store
from mark.adapters.db.tables import ModelRow, ProfileRow
from mark.core.errors import Conflict, NotFound
from mark.core.types import Model

__all__ = [
    "ModelStore",
]


class ModelStore(Store):
    """Create, read, update and delete registered models.

    `list_models` answers from the last read while `models_version` says nothing changed: every
    front-end process reads the models on each fleet sync (twice a second) and its status
    sampler, and building a thousand models from their rows took longer than the rest of a
    sync together; the version is one aggregate query. The models it returns are the same
    (frozen) objects until a change, which lets a caller skip comparing them."""

    _listed: tuple[tuple[int, float | None], list[Model]] | None = None  # (version, models)

    async def create_model(self, model: Model) -> Model:
        await self.create_models([model])
        return model

    async def create_models(self, models: Sequence[Model]) -> None:
        """Register all of `models` or none: one transaction, one batched INSERT per table
        (SQLAlchemy sends the rows as multi-row VALUES), so a thousand models cost a few
        statements. A name already registered (the primary key) refuses all with Conflict."""
        now = time.time()
        rows = [model_values(m, now) for m in models]
        profiles = [p for m in models for p in profile_values(m)]
        if not rows:
            return
        async with self.session() as s:
            try:
                await s.execute(insert(ModelRow), rows)
                if profiles:
                    await s.execute(insert(ProfileRow), profiles)
                await s.commit()
            except IntegrityError as exc:
                if len(models) == 1:
                    raise Conflict(f"model {models[0].name!r} already exists") from exc
                raise Conflict(f"some of the {len(models)} models already exist") from exc

    async def registered_names(self, names: Collection[str]) -> set[str]:
        """Those of `names` that are registered, in one query: one `IN (...)`, so a few
        thousand names at most (a statement binds at most 32,766 values on SQLite, 32,767 on
        asyncpg)."""
        async with self.session() as s:
            found = await s.scalars(select(ModelRow.name).where(ModelRow.name.in_(set(names))))
            return set(found)

    async def get_model(self, name: str) -> Model:
        async with self.session() as s:
            row = await s.get(ModelRow, name)
            if row is None:
                raise NotFound(f"model {name!r} is not registered")
            profiles = (
                await s.scalars(select(ProfileRow).where(ProfileRow.model_name == name))
            ).all()
            return model_from_rows(row, profiles)

    async def models_version(self) -> tuple[int, float | None]:
        """A token that changes whenever the registered models do: their count and the last
        write's time (a create or update stamps `updated_at_s`; a delete lowers the count), in
        one aggregate query. A write stamped by a clock behind the last one and leaving the
        count as it was (an update from another host) is seen at the next change."""
        async with self.session() as s:
            count, last = (
                await s.execute(select(func.count(), func.max(ModelRow.updated_at_s)))
            ).one()
        return int(count), last

    async def list_models(self) -> list[Model]:
        version = await self.models_version()
        listed = self._listed
        if listed is not None and listed[0] == version:
            return list(listed[1])
        async with self.session() as s:
            rows = (await s.scalars(select(ModelRow).order_by(ModelRow.name))).all()
            profiles = (await s.scalars(select(ProfileRow))).all()
        by_model: dict[str, list[ProfileRow]] = {}
        for p in profiles:
            by_model.setdefault(p.model_name, []).append(p)
        models = [model_from_rows(r, by_model.get(r.name, [])) for r in rows]
        self._listed = (version, models)
        return list(models)

    async def update_model(self, model: Model) -> Model:
        async with self.session() as s:
            row = await s.get(ModelRow, model.name)
            if row is None:
                raise NotFound(f"model {model.name!r} is not registered")
            row.slo_latency_ms = model.slo.latency_ms
            row.slo_percentile = model.slo.percentile
            row.backend = model.backend.model_dump()
            row.max_batch = model.max_batch
            row.memory_mb = model.memory_mb
            row.updated_at_s = time.time()
            await s.execute(delete(ProfileRow).where(ProfileRow.model_name == model.name))
            if model.profiles:
                await s.execute(insert(ProfileRow), profile_values(model))
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
