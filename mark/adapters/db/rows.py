"""ORM rows to domain values and back; nothing outside `mark.adapters.db` sees a row."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mark.adapters.db.tables import (
    DecisionRow,
    InferenceKeyRow,
    InstanceRow,
    ModelRow,
    ProfileRow,
)
from mark.core.inference_keys import InferenceKey, StoredKey
from mark.core.types import (
    ActionKind,
    BackendSpec,
    Decision,
    Instance,
    InstanceState,
    Model,
    Offering,
    Profile,
    Slo,
)

__all__ = [
    "model_from_rows",
    "model_values",
    "profile_values",
    "instance_from_row",
    "decision_from_row",
    "key_from_row",
    "key_row",
]


def model_from_rows(row: ModelRow, profiles: Sequence[ProfileRow]) -> Model:
    return Model(
        name=row.name,
        slo=Slo(latency_ms=row.slo_latency_ms, percentile=row.slo_percentile),
        backend=BackendSpec.model_validate(row.backend),
        max_batch=row.max_batch,
        memory_mb=row.memory_mb,
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


def model_values(model: Model, now_s: float) -> dict[str, Any]:
    """The `models` row of `model`, as the columns' values: what an INSERT of many rows at once
    takes (one statement for a thousand models, not a thousand)."""
    return {
        "name": model.name,
        "slo_latency_ms": model.slo.latency_ms,
        "slo_percentile": model.slo.percentile,
        "backend": model.backend.model_dump(),
        "max_batch": model.max_batch,
        "memory_mb": model.memory_mb,
        "created_at_s": now_s,
        "updated_at_s": now_s,
    }


def profile_values(model: Model) -> list[dict[str, Any]]:
    """The `profiles` rows of `model`, as the columns' values."""
    return [
        {
            "model_name": model.name,
            "instance_type": p.instance_type,
            "latency_ms": {str(b): ms for b, ms in p.latency_ms.items()},
            "max_batch": p.max_batch,
            "memory_mb": p.memory_mb,
            "parallelism": p.parallelism,
            "estimated": p.estimated,
            "source": p.source,
        }
        for p in model.profiles.values()
    ]


def instance_from_row(row: InstanceRow) -> Instance:
    return Instance(
        id=row.id,
        offering=Offering.model_validate(row.offering),
        models=tuple(row.models),
        placed_models=None if row.placed_models is None else tuple(row.placed_models),
        draining_models=tuple(row.draining_models or ()),
        state=InstanceState(row.state),
        endpoint=row.endpoint,
        tags=dict(row.tags),
        launched_at_s=row.launched_at_s,
        running_at_s=row.running_at_s,
        draining_at_s=row.draining_at_s,
        terminated_at_s=row.terminated_at_s,
    )


def decision_from_row(row: DecisionRow) -> Decision:
    return Decision(
        at_s=row.at_s,
        action=ActionKind(row.action),
        reason=row.reason,
        model=row.model,
        instance_id=row.instance_id,
        offering_key=row.offering_key,
        expected_cost_usd=row.expected_cost_usd,
        forecast_upper_rps=tuple(row.forecast_upper_rps),
        term=row.term,
    )


def key_from_row(row: InferenceKeyRow) -> StoredKey:
    key = InferenceKey.model_validate(
        {
            "id": row.id,
            "prefix": row.prefix,
            "scope": row.scope,
            "label": row.label,
            "created_at_s": row.created_at_s,
            "expires_at_s": row.expires_at_s,
            "last_used_at_s": row.last_used_at_s,
            "revoked_at_s": row.revoked_at_s,
        }
    )
    return StoredKey(key, row.digest)


def key_row(stored: StoredKey) -> InferenceKeyRow:
    key = stored.key
    return InferenceKeyRow(
        id=key.id,
        prefix=key.prefix,
        digest=stored.digest,
        scope=key.scope.model_dump(),
        label=key.label,
        created_at_s=key.created_at_s,
        expires_at_s=key.expires_at_s,
        last_used_at_s=key.last_used_at_s,
        revoked_at_s=key.revoked_at_s,
    )
