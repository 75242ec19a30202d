"""Inference keys (mark.core.inference_keys): made and revoked by the admin API, read by every
front end at each sync, their last use written back by the front ends in batches."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import or_, select, update

from mark.adapters.db.rows import key_from_row, key_row
from mark.adapters.db.store import Store
from mark.adapters.db.tables import InferenceKeyRow
from mark.core.errors import NotFound
from mark.core.inference_keys import InferenceKey, StoredKey

__all__ = [
    "InferenceKeyStore",
]


class InferenceKeyStore(Store):
    """Add, list and revoke inference keys; record when they were last used."""

    async def add_inference_key(self, stored: StoredKey) -> None:
        async with self.session() as s:
            s.add(key_row(stored))
            await s.commit()

    async def list_inference_keys(self) -> list[StoredKey]:
        """Every key, revoked and expired ones included (they keep their models protected),
        oldest first."""
        query = select(InferenceKeyRow).order_by(InferenceKeyRow.created_at_s, InferenceKeyRow.id)
        async with self.session() as s:
            rows = (await s.scalars(query)).all()
        return [key_from_row(r) for r in rows]

    async def revoke_inference_key(self, key_id: str, at_s: float) -> InferenceKey:
        """Revoke from `at_s` on; a key revoked before keeps its first time (revoking twice is
        done, not an error). NotFound for an unknown id."""
        async with self.session() as s:
            row = await s.get(InferenceKeyRow, key_id)
            if row is None:
                raise NotFound(f"no inference key has id {key_id!r}")
            if row.revoked_at_s is None:
                row.revoked_at_s = at_s
            await s.commit()
            return key_from_row(row).key

    async def record_key_use(self, used: Mapping[str, float]) -> None:
        """Each key's last use, by id: kept where another front end recorded a later one."""
        if not used:
            return
        async with self.session() as s:
            for key_id, at_s in sorted(used.items()):
                await s.execute(
                    update(InferenceKeyRow)
                    .where(
                        InferenceKeyRow.id == key_id,
                        or_(
                            InferenceKeyRow.last_used_at_s.is_(None),
                            InferenceKeyRow.last_used_at_s < at_s,
                        ),
                    )
                    .values(last_used_at_s=at_s)
                )
            await s.commit()
