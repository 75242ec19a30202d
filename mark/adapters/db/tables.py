"""ORM tables. Every change here needs an Alembic revision in
mark/adapters/db/migrations/versions/."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Base",
    "ModelRow",
    "ProfileRow",
    "InstanceTypeRow",
    "OfferingRow",
    "InstanceRow",
    "TransitionRow",
    "DecisionRow",
    "InstanceChargeRow",
    "InstanceModelChargeRow",
    "ServerlessChargeRow",
    "LeaseRow",
    "ObservedCountRow",
    "ObservedBusyRow",
    "InferenceKeyRow",
]


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class ModelRow(Base):
    __tablename__ = "models"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    slo_latency_ms: Mapped[float] = mapped_column(Float)
    slo_percentile: Mapped[float] = mapped_column(Float)
    backend: Mapped[dict[str, Any]] = mapped_column(JSON)
    max_batch: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at_s: Mapped[float] = mapped_column(Float)
    updated_at_s: Mapped[float] = mapped_column(Float)


class ProfileRow(Base):
    __tablename__ = "profiles"

    model_name: Mapped[str] = mapped_column(
        String(63), ForeignKey("models.name", ondelete="CASCADE"), primary_key=True
    )
    instance_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    latency_ms: Mapped[dict[str, Any]] = mapped_column(JSON)
    max_batch: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[float] = mapped_column(Float)
    parallelism: Mapped[int] = mapped_column(Integer)
    estimated: Mapped[bool] = mapped_column(Boolean)
    source: Mapped[str] = mapped_column(Text)


class InstanceTypeRow(Base):
    __tablename__ = "instance_types"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)


class OfferingRow(Base):
    __tablename__ = "offerings"

    key: Mapped[str] = mapped_column(String(160), primary_key=True)
    instance_type: Mapped[str] = mapped_column(String(64))
    zone: Mapped[str] = mapped_column(String(64))
    market: Mapped[str] = mapped_column(String(16))
    price_per_hour: Mapped[float] = mapped_column(Float)
    available: Mapped[bool] = mapped_column(Boolean)
    source: Mapped[str] = mapped_column(Text)
    updated_at_s: Mapped[float] = mapped_column(Float)


class InstanceRow(Base):
    __tablename__ = "instances"
    __table_args__ = (Index("ix_instances_state", "state"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    offering: Mapped[dict[str, Any]] = mapped_column(JSON)
    instance_type: Mapped[str] = mapped_column(String(64))
    market: Mapped[str] = mapped_column(String(16))
    models: Mapped[list[Any]] = mapped_column(JSON)
    placed_models: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    draining_models: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    state: Mapped[str] = mapped_column(String(16))
    endpoint: Mapped[str | None] = mapped_column(String(255), nullable=True)
    tags: Mapped[dict[str, Any]] = mapped_column(JSON)
    launched_at_s: Mapped[float] = mapped_column(Float)
    running_at_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    draining_at_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    terminated_at_s: Mapped[float | None] = mapped_column(Float, nullable=True)


class TransitionRow(Base):
    __tablename__ = "instance_transitions"
    __table_args__ = (Index("ix_transitions_instance", "instance_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    instance_id: Mapped[str] = mapped_column(String(64))
    from_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    to_state: Mapped[str] = mapped_column(String(16))
    at_s: Mapped[float] = mapped_column(Float)


class DecisionRow(Base):
    __tablename__ = "decisions"
    __table_args__ = (Index("ix_decisions_at", "at_s"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at_s: Mapped[float] = mapped_column(Float)
    action: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(63), nullable=True)
    instance_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    offering_key: Mapped[str | None] = mapped_column(String(160), nullable=True)
    expected_cost_usd: Mapped[float] = mapped_column(Float)
    forecast_upper_rps: Mapped[list[Any]] = mapped_column(JSON)
    term: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the leader's, if fenced


class InstanceChargeRow(Base):
    """Cumulative charge of one instance so far (rewritten each tick, final at termination)."""

    __tablename__ = "instance_charges"

    instance_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(63))
    instance_type: Mapped[str] = mapped_column(String(64))
    market: Mapped[str] = mapped_column(String(16))
    seconds: Mapped[float] = mapped_column(Float)
    usd: Mapped[float] = mapped_column(Float)
    updated_at_s: Mapped[float] = mapped_column(Float)


class InstanceModelChargeRow(Base):
    """The part of one instance's cumulative charge that each model it served bears (shared
    by busy time, `billing.split_charge`), and the busy seconds already shared out."""

    __tablename__ = "instance_model_charges"

    instance_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(63), primary_key=True)
    usd: Mapped[float] = mapped_column(Float)
    busy_s: Mapped[float] = mapped_column(Float)


class ServerlessChargeRow(Base):
    __tablename__ = "serverless_charges"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at_s: Mapped[float] = mapped_column(Float)
    model: Mapped[str] = mapped_column(String(63))
    requests: Mapped[int] = mapped_column(Integer)
    gb_seconds: Mapped[float] = mapped_column(Float)
    usd: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(String(64))


class LeaseRow(Base):
    """Who runs the control loop (mark.adapters.db.leadership): the holder, its term (raised at
    every change of holder) and when the lease runs out unless renewed."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255))
    term: Mapped[int] = mapped_column(Integer)
    expires_at_s: Mapped[float] = mapped_column(Float)


class ObservedCountRow(Base):
    """Requests one front end (`host`) saw for a model in one forecast bucket; the leader
    forecasts their sum over hosts."""

    __tablename__ = "observed_counts"
    __table_args__ = (Index("ix_observed_counts_bucket", "bucket_start_s"),)

    host: Mapped[str] = mapped_column(String(255), primary_key=True)
    model: Mapped[str] = mapped_column(String(63), primary_key=True)
    bucket_start_s: Mapped[float] = mapped_column(Float, primary_key=True)
    requests: Mapped[float] = mapped_column(Float)


class ObservedBusyRow(Base):
    """Seconds one front end (`host`) had batches of a model in service on an instance, so far;
    the leader shares the instance's charge by their sum over hosts."""

    __tablename__ = "observed_busy"

    host: Mapped[str] = mapped_column(String(255), primary_key=True)
    instance_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(63), primary_key=True)
    seconds: Mapped[float] = mapped_column(Float)


class InferenceKeyRow(Base):
    """An inference key (mark.core.inference_keys): its scope and times, and the SHA-256 of its
    secret, never the secret itself."""

    __tablename__ = "inference_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    prefix: Mapped[str] = mapped_column(String(16))
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[dict[str, Any]] = mapped_column(JSON)
    label: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at_s: Mapped[float] = mapped_column(Float)
    expires_at_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_used_at_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked_at_s: Mapped[float | None] = mapped_column(Float, nullable=True)
