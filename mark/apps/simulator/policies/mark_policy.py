"""Mark itself in the simulator: the live control loop's forecaster and planner, unchanged.

Every `ControlLoopConfig.tick_s` (60 s) it feeds the forecaster (`predictors`, by name from
ForecastConfig) the whole buckets completed since the last tick (the bucket rule of
`provisioner.policy.snapshot`), forecasts the planning horizon at the configured upper quantile,
and calls `provisioner.policy.planner.plan` on the snapshot `build_snapshot` makes of the
simulated fleet, exactly as `mark serve` does; its data plane batches and spills
(provisioner/policy/spill.py). `spot` picks MArk-ondemand (False) or MArk-spot (True).

The ablations are the live system's own switches, not other code: `batching` is
`BatchingConfig.enabled` (off: the data plane sends requests one by one and the snapshot sizes
capacity unbatched, `build_snapshot(batching=...)`), `spill` is `SpillConfig.enabled` (off:
nothing goes to the serverless pool and nothing is kept warm for it), and the forecast is
`ForecastConfig`'s (`predictor`, `upper_band`), as the control loop reads them.

MArk warms serverless functions before an expected shortfall: the plan says how many
(`provisioner.policy.prewarm`, from the serverless latency), and the engine keeps them warm.

The forecaster is incremental by design (one `observe` per bucket), so it travels inside the
returned state and is advanced in place rather than copied each tick.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from mark.apps.simulator.policies.base import PolicyContext, PolicyDecision
from mark.core.config import ControlLoopConfig, ForecastConfig, PlannerConfig
from mark.core.types import Offering
from predictors import Forecaster, create_forecaster
from provisioner.policy.planner import plan
from provisioner.policy.snapshot import (
    PlannerState,
    ServerlessTerms,
    build_snapshot,
    covered_quantile,
    forecast_buckets,
    whole_buckets,
)

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
    serverless: ServerlessTerms | None = None
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
        done = whole_buckets(first_s, ctx.now_s, bucket_s)
        seen_until = state.observed_until_s
        for k in range(done):
            b_start = first_s + k * bucket_s
            if seen_until is not None and b_start < seen_until - 1e-9:
                continue
            lo = k * per_bucket
            state.forecaster.observe(b_start, float(metrics.arrivals[lo : lo + per_bucket].sum()))
            seen_until = b_start + bucket_s
        horizon = forecast_buckets(self.planner.horizon_s, bucket_s)
        pool = self.serverless if self.spill else None
        quantile = covered_quantile(self.forecast.quantile, ctx.model.slo, pool)
        forecast = state.forecaster.forecast(
            horizon,
            quantile,
            band=self.forecast.upper_band,
            peak_buckets=forecast_buckets(self.planner.scale_in_window_s, bucket_s),
        )
        snapshot = build_snapshot(
            ctx.now_s,
            [ctx.model],
            {ctx.model.name: forecast},
            instances=ctx.instances,
            offerings=ctx.offerings.listed,
            instance_types=ctx.instance_types,
            tick_s=self.interval_s,
            state=state.planner_state,
            interruptions=ctx.interruptions,
            serverless=pool,
            batching=self.batching,
        )
        planner = self.planner
        if ctx.warm_start:
            uncapped = planner.max_instances_per_model
            planner = planner.model_copy(
                update={
                    "max_launches_per_tick": uncapped,
                    "max_launches_per_type_per_tick": uncapped,
                }
            )
        result = plan(snapshot, planner, ctx.cache)
        return PolicyDecision(
            actions=result.actions,
            state=dataclasses.replace(
                state, planner_state=result.state, observed_until_s=seen_until
            ),
            warm_functions=result.warm_functions.get(ctx.model.name, 0),
        )
