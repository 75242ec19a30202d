"""Domain values shared by the front end, the control loop, the planner and the simulator.

Everything here is a frozen, validated value: policies receive them in snapshots and return new
ones, never mutate. Times are epoch seconds (`_s`), latencies milliseconds (`_ms`), rates
requests per second (`_rps`), prices US dollars per hour (`_per_hour`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from enum import StrEnum
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mark.core.errors import InvalidTransition, InvalidValue

__all__ = [
    "Market",
    "AcceleratorKind",
    "InstanceState",
    "Protocol",
    "Slo",
    "Profile",
    "BackendSpec",
    "Model",
    "InstanceType",
    "Offering",
    "Instance",
    "Forecast",
    "ActionKind",
    "Decision",
    "MODEL_NAME_PATTERN",
]

MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
_MODEL_NAME_RE = re.compile(MODEL_NAME_PATTERN)


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Market(StrEnum):
    ON_DEMAND = "on-demand"
    SPOT = "spot"


class AcceleratorKind(StrEnum):
    NONE = "none"
    GPU = "gpu"
    INFERENTIA = "inferentia"


class InstanceState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DRAINING = "draining"
    TERMINATED = "terminated"


Protocol = Literal["kserve-v2", "tfserving"]

# The only edges an instance may take; terminating is allowed from every live state because a
# cloud can take an instance back at any moment (spot interruption, launch failure).
_TRANSITIONS: Mapping[InstanceState, frozenset[InstanceState]] = {
    InstanceState.PENDING: frozenset({InstanceState.RUNNING, InstanceState.TERMINATED}),
    InstanceState.RUNNING: frozenset({InstanceState.DRAINING, InstanceState.TERMINATED}),
    InstanceState.DRAINING: frozenset({InstanceState.TERMINATED}),
    InstanceState.TERMINATED: frozenset(),
}


class Slo(_Value):
    """At least `percentile` of requests answered within `latency_ms` (MArk: SLmin, RTmax)."""

    latency_ms: Annotated[float, Field(gt=0, le=3_600_000)]
    percentile: Annotated[float, Field(gt=0, lt=1)]

    @property
    def latency_s(self) -> float:
        return self.latency_ms / 1000.0


class Profile(_Value):
    """Measured service time of one model on one instance type, per batch size.

    MArk treats execution as deterministic; the planner and batcher use the least-squares line
    T(b) = a + c*b through the measured points (`a_ms`, `c_ms`).
    """

    instance_type: Annotated[str, Field(min_length=1)]
    latency_ms: dict[int, Annotated[float, Field(gt=0)]]
    max_batch: Annotated[int, Field(ge=1, le=4096)] = 1
    memory_mb: Annotated[float, Field(ge=0)] = 0.0
    parallelism: Annotated[int, Field(ge=1, le=1024)] = 1
    estimated: bool = False
    source: str = ""

    @field_validator("latency_ms")
    @classmethod
    def _batch_sizes_positive(cls, value: dict[int, float]) -> dict[int, float]:
        if not value:
            raise ValueError("needs at least one (batch size, latency) point")
        if any(b < 1 for b in value):
            raise ValueError("batch sizes must be >= 1")
        return dict(sorted(value.items()))

    @model_validator(mode="after")
    def _max_batch_covers_points(self) -> Profile:
        if max(self.latency_ms) > self.max_batch:
            raise ValueError(
                f"max_batch {self.max_batch} is below the largest profiled batch "
                f"{max(self.latency_ms)}"
            )
        return self

    @cached_property
    def _fit(self) -> tuple[float, float]:
        sizes = list(self.latency_ms)
        times = list(self.latency_ms.values())
        if len(sizes) == 1:
            # One point: all of it is per-request cost (CPU-like, no batching gain assumed).
            return 0.0, times[0] / sizes[0]
        n = len(sizes)
        mean_b = sum(sizes) / n
        mean_t = sum(times) / n
        var_b = sum((b - mean_b) ** 2 for b in sizes)
        c = sum((b - mean_b) * (t - mean_t) for b, t in zip(sizes, times, strict=True)) / var_b
        c = max(c, 0.0)
        a = max(mean_t - c * mean_b, 0.0)
        return a, c

    @property
    def a_ms(self) -> float:
        return self._fit[0]

    @property
    def c_ms(self) -> float:
        return self._fit[1]

    def service_ms(self, batch: int) -> float:
        """T(b) = a + c*b, the fitted time of one batch of `batch` requests."""
        return self.a_ms + self.c_ms * batch

    @property
    def fastest_ms(self) -> float:
        """The shortest any request can take on this type: one request alone."""
        return min(self.service_ms(1), self.latency_ms[min(self.latency_ms)])


class BackendSpec(_Value):
    """How instances serve the model: the protocol the front end speaks to them and the
    artifact `mark worker` loads (`builtin:mlp`, `onnx:/path`, `sklearn:/path`,
    `torchscript:/path`), or an external server's model name."""

    protocol: Protocol = "kserve-v2"
    artifact: Annotated[str, Field(min_length=1)] = "builtin:mlp"
    backend_model_name: str | None = None


class Model(_Value):
    """A registered model: its SLO, how it is served, how fast it runs on each type and how
    much memory it takes. `memory_mb` (MiB) is the footprint its owner declares for it in a
    worker's memory, whatever the type (None: not declared), and a profile's `memory_mb` the
    same on one type: the admin API refuses a model larger than the workers' whole memory
    budget. A worker itself charges what it loads (loaders.py's `size_bytes`)."""

    name: str
    slo: Slo
    backend: BackendSpec = BackendSpec()
    profiles: dict[str, Profile] = Field(default_factory=dict)
    max_batch: Annotated[int, Field(ge=1, le=4096)] = 32
    memory_mb: Annotated[float, Field(gt=0)] | None = None

    @field_validator("name")
    @classmethod
    def _name_shape(cls, value: str) -> str:
        if not _MODEL_NAME_RE.match(value):
            raise ValueError(
                "must be 1-63 characters of a-z, 0-9, '.', '_' or '-', starting with a letter "
                "or digit"
            )
        return value

    @model_validator(mode="after")
    def _slo_feasible(self) -> Model:
        for key, profile in self.profiles.items():
            if key != profile.instance_type:
                raise InvalidValue(
                    f"profiles.{key}.instance_type",
                    f"profiles[{key!r}] describes instance type {profile.instance_type!r}",
                )
        if self.profiles:
            fastest = min(p.fastest_ms for p in self.profiles.values())
            if self.slo.latency_ms < fastest:
                raise InvalidValue(
                    "slo.latency_ms",
                    f"latency SLO {self.slo.latency_ms} ms is shorter than the fastest "
                    f"profile ({fastest:.1f} ms): no instance type can meet it",
                )
        return self


class InstanceType(_Value):
    """One EC2 (or local) instance type, as the catalog or DescribeInstanceTypes gives it."""

    name: Annotated[str, Field(min_length=1)]
    vcpus: Annotated[int, Field(ge=1)]
    memory_gib: Annotated[float, Field(gt=0)]
    accelerator: AcceleratorKind = AcceleratorKind.NONE
    accelerator_count: Annotated[int, Field(ge=0)] = 0
    on_demand_price_per_hour: Annotated[float, Field(ge=0)]
    billing_granularity_s: Annotated[float, Field(gt=0)] = 1.0
    billing_minimum_s: Annotated[float, Field(ge=0)] = 60.0
    launch_overhead_s: Annotated[float, Field(ge=0)] = 120.0
    # Memory that models are packed into (an accelerator's own memory); None: the host's.
    model_memory_mb: Annotated[float, Field(gt=0)] | None = None
    source: str = ""

    @property
    def model_capacity_mb(self) -> float:
        """What many-model placement may fill with models on one instance."""
        if self.model_memory_mb is not None:
            return self.model_memory_mb
        return self.memory_gib * 1024.0

    @model_validator(mode="after")
    def _accelerator_consistent(self) -> InstanceType:
        if (self.accelerator == AcceleratorKind.NONE) != (self.accelerator_count == 0):
            raise ValueError("accelerator_count must be 0 exactly when accelerator is 'none'")
        return self

    def billed_s(self, seconds: float) -> float:
        """The seconds a cloud bills for `seconds` of running: at least the minimum, rounded up
        to the granularity (EC2 Linux: 60 s, then per second). The one rounding rule: the
        ledger, the planner's paid time (`provisioner.policy.billing`) and the simulator all
        use it."""
        if seconds <= 0:
            return 0.0
        billed = max(seconds, self.billing_minimum_s)
        step = self.billing_granularity_s
        return math.ceil(billed / step - 1e-9) * step

    def charge_usd(self, seconds: float, price_per_hour: float | None = None) -> float:
        """What `seconds` of running costs at `price_per_hour` (default: on-demand)."""
        price = self.on_demand_price_per_hour if price_per_hour is None else price_per_hour
        return self.billed_s(seconds) * price / 3600.0


class Offering(_Value):
    """A way to buy an instance type now: market and zone at a price. Listed even when it can't
    be had (`available=False`), so that the planner can say why it skipped it."""

    instance_type: Annotated[str, Field(min_length=1)]
    zone: Annotated[str, Field(min_length=1)]
    market: Market
    price_per_hour: Annotated[float, Field(ge=0)]
    available: bool = True
    source: str = ""

    @property
    def key(self) -> str:
        """Pool identity (type x zone x market), stable across price changes."""
        return f"{self.instance_type}/{self.zone}/{self.market.value}"


class Instance(_Value):
    """One bought instance and its lifecycle: pending -> running -> draining -> terminated.

    `models` are the models it may serve. On an instance of a many-model fleet, which the
    control loop places models on (mark/apps/control/placement_applier.py), `placed_models`
    are those the placement put there (the front ends route a model to the instances holding
    it where it is placed, else to any holding it) and `draining_models` those being taken off
    it (no requests routed there, no loads asked for, until the control loop unloads them);
    `placed_models` is None on an instance no placement manages (routed by residency alone)."""

    id: Annotated[str, Field(min_length=1)]
    offering: Offering
    models: tuple[str, ...] = ()
    placed_models: tuple[str, ...] | None = None
    draining_models: tuple[str, ...] = ()
    state: InstanceState = InstanceState.PENDING
    endpoint: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    launched_at_s: float
    running_at_s: float | None = None
    draining_at_s: float | None = None
    terminated_at_s: float | None = None

    @property
    def live(self) -> bool:
        return self.state != InstanceState.TERMINATED

    def transition(self, state: InstanceState, now_s: float, **changes: Any) -> Instance:
        """The same instance in `state` from `now_s`; raises InvalidTransition on an edge the
        state machine lacks (a repeated transition to the current state is a no-op)."""
        if state == self.state:
            return self.model_copy(update=changes) if changes else self
        if state not in _TRANSITIONS[self.state]:
            raise InvalidTransition(f"instance {self.id}: {self.state} -> {state} is not allowed")
        stamp = {
            InstanceState.RUNNING: "running_at_s",
            InstanceState.DRAINING: "draining_at_s",
            InstanceState.TERMINATED: "terminated_at_s",
        }[state]
        return self.model_copy(update={"state": state, stamp: now_s, **changes})


class Forecast(_Value):
    """Forecast arrival rate for the buckets of a horizon, with an upper quantile band that the
    planner provisions for (the provisioner covers `upper_rps`, not the mean). `observed_rps`:
    the newest observed rate the forecast was made from (None: unknown), below which the planner
    does not release capacity it could not buy back in time on a forecast's word alone.
    `observed_peak_rps`: the highest rate observed over the planner's scale-in window (None:
    the newest alone); the planner releases nothing that would leave less capacity than that, so
    a one-bucket dip in regime-switching traffic is not answered by a release and a re-buy."""

    start_s: float
    bucket_s: Annotated[float, Field(gt=0)]
    mean_rps: tuple[float, ...]
    upper_rps: tuple[float, ...]
    quantile: Annotated[float, Field(gt=0, lt=1)] = 0.95
    observed_rps: Annotated[float, Field(ge=0)] | None = None
    observed_peak_rps: Annotated[float, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _aligned(self) -> Forecast:
        if len(self.mean_rps) != len(self.upper_rps):
            raise ValueError("mean_rps and upper_rps must have one value per bucket")
        if any((not math.isfinite(v)) or v < 0 for v in (*self.mean_rps, *self.upper_rps)):
            raise ValueError("forecast rates must be finite and >= 0")
        return self

    @property
    def peak_upper_rps(self) -> float:
        return max(self.upper_rps, default=0.0)


class ActionKind(StrEnum):
    """What a decision-log line records (stored as its value in `decisions.action`). Spills are
    per-request data-plane events, counted in metrics and the cost ledger, never decisions: no
    writer ever stored a "spill" line, so none is listed."""

    LAUNCH = "launch"
    DRAIN = "drain"
    TERMINATE = "terminate"
    HOLD = "hold"
    BUDGET_LIMITED = "budget-limited"
    LAUNCH_CAPPED = "launch-capped"
    PLAN_SPILL = "plan-spill"  # demand the planner leaves to the serverless pool, with why
    LOAD = "load"  # a model loaded where the many-model placement put it
    UNLOAD = "unload"  # a model drained and unloaded from an instance (moved, or scaled to zero)
    ERROR = "error"


class Decision(_Value):
    """One line of the decision log: what was done or declined, and why, with the money it was
    expected to cost and the forecast it was based on."""

    at_s: float
    action: ActionKind
    reason: Annotated[str, Field(min_length=1)]
    model: str | None = None
    instance_id: str | None = None
    offering_key: str | None = None
    expected_cost_usd: Annotated[float, Field(ge=0)] = 0.0
    forecast_upper_rps: tuple[float, ...] = ()
    # the control lease's term it was written in (`control.leader_election`); None: no lease
    term: int | None = None


def require_finite(field: str, value: float, *, minimum: float | None = None) -> float:
    """Guard for plain numbers at the edges (CLI flags, trace rows) where no model validates."""
    if not math.isfinite(value):
        raise InvalidValue(field, f"must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise InvalidValue(field, f"must be >= {minimum}, got {value!r}")
    return value
