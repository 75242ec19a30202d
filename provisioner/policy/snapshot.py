"""What the planner sees and remembers: the fleet snapshot, the state carried between ticks,
and the one builder that the control loop, the simulator and `mark plan` all call.

The bucket rule: forecasts are in buckets of `ForecastConfig.bucket_s`, and a forecaster
observes only whole buckets that have ended by now (`whole_buckets`), each stamped with its
start. Re-planning runs more often than that (an interruption notice, capacity lost or refused
re-plans at once), so the tick is the wrong unit: counting the requests since the last tick as
one bucket would give the forecaster partial buckets at full weight, and a `tick_s` other than
the forecaster's bucket would make the live loop forecast in other units than the simulator and
`mark plan` that evaluate it. The bucket is the forecaster's unit, the tick only how often the
planner runs (`FleetSnapshot.tick_s`: launches the next tick can still make are deferred).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from mark.core.types import Forecast, Instance, InstanceType, Model, Offering, Slo

__all__ = [
    "ServerlessTerms",
    "covered_quantile",
    "ModelDemand",
    "PlannerState",
    "FleetSnapshot",
    "build_snapshot",
    "forecast_buckets",
    "whole_buckets",
]

# A bucket counts as ended when at most this share of it is left: scheduled ticks land a few
# milliseconds either side of a bucket edge, and one that lands early must not skip a bucket.
_BUCKET_EDGE_SLACK = 0.05


@dataclass(frozen=True, slots=True)
class ServerlessTerms:
    """The spill pool as the planner weighs it against instances: its warm latency, what one
    request costs there (Lambda's request fee plus duration at the function's memory) and how
    many requests it runs at once. The greedy hands a window of demand to the pool instead of
    buying an instance for it when the pool is cheaper per request and can carry it."""

    latency_ms: float
    usd_per_request: float
    concurrency: int

    @property
    def max_rps(self) -> float:
        """The rate the pool sustains at its warm latency (Little's law)."""
        return self.concurrency * 1000.0 / max(self.latency_ms, 1e-9)

    def fits(self, slo_latency_ms: float) -> bool:
        """A request spilled at once still answers within the SLO."""
        return 0.0 < self.latency_ms < slo_latency_ms


def covered_quantile(configured: float, slo: Slo, pool: ServerlessTerms | None) -> float:
    """The forecast quantile the planner covers for a model: the configured one where the
    serverless pool answers within the SLO (demand above the band is spilled in time), else at
    least the SLO's percentile. Without such a pool every request above the capacity bought
    misses its deadline until more capacity boots, so a band that the traffic exceeds in more
    than 1 - percentile of the buckets spends more than the SLO's whole miss allowance on
    forecast errors alone."""
    if pool is not None and pool.fits(slo.latency_ms):
        return configured
    return max(configured, slo.percentile)


@dataclass(frozen=True, slots=True)
class ModelDemand:
    """A registered model and the forecast the planner covers for it this tick."""

    model: Model
    forecast: Forecast


@dataclass(frozen=True, slots=True)
class PlannerState:
    """What the planner remembers between ticks: when each model last launched each instance
    type, keyed (model, type) (that type's scale-in hold starts there), and which pools were
    interrupted (`preempted_pools`) or refused a launch for capacity (`refused_pools`) when;
    both are avoided for `pool_cooldown_s` (`provisioner.policy.offerings.Offerings` applies
    them)."""

    last_launch_s: Mapping[tuple[str, str], float] = field(default_factory=dict)
    preempted_pools: Mapping[str, float] = field(default_factory=dict)
    refused_pools: Mapping[str, float] = field(default_factory=dict)

    def with_refusal(self, pool_key: str, at_s: float) -> PlannerState:
        """This state with `pool_key` refused at `at_s` (the control loop records a capacity
        refusal here, and the re-plan sees the pool unavailable through the same state)."""
        return dataclasses.replace(self, refused_pools={**self.refused_pools, pool_key: at_s})


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    """Everything `plan` sees. `offerings` are the provider's, as listed (unavailable ones
    included); `interruptions` maps instance ids with a notice to the time the cloud takes them
    back; `tick_s` is when the next plan runs (launches that can wait until then are deferred);
    `serverless` is the spill pool's terms (None: no pool, nothing to warm or spill to)."""

    now_s: float
    models: Mapping[str, ModelDemand]
    instances: tuple[Instance, ...]
    offerings: tuple[Offering, ...]
    instance_types: Mapping[str, InstanceType]
    planner_state: PlannerState = field(default_factory=PlannerState)
    interruptions: Mapping[str, float] = field(default_factory=dict)
    tick_s: float = 60.0
    serverless: ServerlessTerms | None = None


def build_snapshot(
    now_s: float,
    models: Iterable[Model],
    forecasts: Mapping[str, Forecast],
    *,
    instances: Iterable[Instance],
    offerings: Iterable[Offering],
    instance_types: Mapping[str, InstanceType],
    tick_s: float,
    state: PlannerState | None = None,
    interruptions: Mapping[str, float] | None = None,
    serverless: ServerlessTerms | None = None,
    batching: bool = True,
) -> FleetSnapshot:
    """The snapshot of one planning tick, the same way everywhere: one demand per model from
    its forecast, the live instances, the offerings as the provider lists them (the refused and
    preempted pools in `state` are applied by the planner's `Offerings`, so a refusal recorded
    during the apply is seen by the re-plan), the state and the interruption notices.

    `batching` False (`BatchingConfig.enabled`): the data plane sends requests one by one, so
    each model enters the snapshot with `max_batch` 1 and the planner buys the capacity at the
    SLO of unbatched service, the capacity the instances will run at."""
    if not batching:
        models = [m.model_copy(update={"max_batch": 1}) for m in models]
    return FleetSnapshot(
        now_s=now_s,
        models={m.name: ModelDemand(m, forecasts[m.name]) for m in models},
        instances=tuple(i for i in instances if i.live),
        offerings=tuple(offerings),
        instance_types=instance_types,
        planner_state=state if state is not None else PlannerState(),
        interruptions=dict(interruptions or {}),
        tick_s=tick_s,
        serverless=serverless,
    )


def forecast_buckets(horizon_s: float, bucket_s: float) -> int:
    """Buckets a forecast needs to cover the planning horizon."""
    return max(1, math.ceil(horizon_s / bucket_s - 1e-9))


def whole_buckets(since_s: float, now_s: float, bucket_s: float) -> int:
    """Whole buckets of `bucket_s` from `since_s` that have ended by `now_s`: what a
    forecaster may observe now (see the module docstring)."""
    return max(0, math.floor((now_s - since_s) / bucket_s + _BUCKET_EDGE_SLACK))
