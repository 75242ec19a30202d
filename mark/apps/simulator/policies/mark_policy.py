"""Mark itself in the simulator: the live control loop's forecaster and planner, unchanged.

Every `ControlLoopConfig.tick_s` (60 s) it feeds the forecaster (`predictors`, by name from
ForecastConfig) the requests of the buckets completed since the last tick, forecasts the planning
horizon at the configured upper quantile, and calls `provisioner.policy.planner.plan` on a
`FleetSnapshot` built from the simulated fleet, exactly as `mark serve` does; its data plane
batches and spills (provisioner/policy/spill.py). `spot` picks MArk-ondemand (False) or MArk-spot
(True).

MArk warms serverless functions before an expected shortfall; here the policy keeps warm as many
sandboxes as the gap between the next bucket's forecast (upper) and the capacity already serving
needs at the serverless latency, plus one.

The forecaster is incremental by design (one `observe` per bucket), so it travels inside the
returned state and is advanced in place rather than copied each tick.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from mark.apps.simulator.policies.base import PolicyContext, PolicyDecision, batched_capacity_rps
from mark.core.config import ControlLoopConfig, ForecastConfig, PlannerConfig
from mark.core.types import InstanceState, Offering
from predictors import Forecaster, create_forecaster
from provisioner.policy.planner import FleetSnapshot, ModelDemand, PlannerState, plan

__all__ = ["MarkPolicy", "MarkState"]


@dataclass
class MarkState:
    forecaster: Forecaster
    planner_state: PlannerState = field(default_factory=PlannerState)
    observed_until_s: float | None = None


@dataclass(frozen=True)
class MarkPolicy:
    name: str
    planner: PlannerConfig
    forecast: ForecastConfig = ForecastConfig()
    control: ControlLoopConfig = ControlLoopConfig()
    serverless_latency_ms: float = 0.0
    spill: bool = True
    batching: bool = True
    interruptible: bool = True
    terminates_drained: bool = True

    @property
    def interval_s(self) -> float:
        return self.control.tick_s

    def initial_state(self) -> MarkState:
        return MarkState(
            create_forecaster(self.forecast.predictor, bucket_s=self.forecast.bucket_s)
        )

    def price_per_hour(self, offering: Offering) -> float:
        return offering.price_per_hour

    def decide(self, ctx: PolicyContext, state: MarkState) -> PolicyDecision:
        bucket_s = self.forecast.bucket_s
        metrics = ctx.metrics
        per_bucket = max(1, round(bucket_s / metrics.window_s))
        # Whole buckets of history that end by now and that the forecaster has not seen.
        first_s = float(metrics.starts_s[0]) if metrics.starts_s.size else ctx.now_s
        done = int((ctx.now_s - first_s) // bucket_s)
        seen_until = state.observed_until_s
        for k in range(done):
            b_start = first_s + k * bucket_s
            if seen_until is not None and b_start < seen_until - 1e-9:
                continue
            lo = k * per_bucket
            state.forecaster.observe(b_start, float(metrics.arrivals[lo : lo + per_bucket].sum()))
            seen_until = b_start + bucket_s
        horizon = max(1, math.ceil(self.planner.horizon_s / bucket_s))
        forecast = state.forecaster.forecast(horizon, self.forecast.quantile)
        snapshot = FleetSnapshot(
            now_s=ctx.now_s,
            models={ctx.model.name: ModelDemand(ctx.model, forecast)},
            instances=ctx.instances,
            offerings=ctx.offerings,
            instance_types=ctx.instance_types,
            planner_state=state.planner_state,
            interruptions=ctx.interruptions,
            tick_s=self.interval_s,
        )
        result = plan(snapshot, self.planner, ctx.cache)
        serving = sum(
            batched_capacity_rps(ctx.model, i.offering.instance_type, ctx.cache)
            for i in ctx.instances
            if i.state == InstanceState.RUNNING and i.id not in ctx.interruptions
        )
        gap_rps = max(forecast.upper_rps[0] - serving, 0.0)
        warm = math.ceil(gap_rps * self.serverless_latency_ms / 1000.0) + 1
        return PolicyDecision(
            actions=result.actions,
            state=dataclasses.replace(
                state, planner_state=result.state, observed_until_s=seen_until
            ),
            warm_functions=warm,
        )
