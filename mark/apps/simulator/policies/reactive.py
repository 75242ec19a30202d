"""`reactive` and `reactive-cpu`: a SageMaker real-time endpoint with target-tracking
autoscaling, the MArk paper's baseline (MArk, section 6; DESIGN.md "Peers").

Parameters and sources:
- Metric `SageMakerVariantInvocationsPerInstance`: invocations per minute divided by the
  instances in service, 1-minute CloudWatch periods (SageMaker developer guide, "Automatic
  scaling of Amazon SageMaker models": "Define a target-tracking scaling policy").
- Target: `capacity_rps * SAFETY_FACTOR * 60` with SAFETY_FACTOR 0.5, i.e. over-provisioning
  factor 2, as the SageMaker developer guide advised ("Load testing your auto scaling
  configuration": MAX_RPS * SAFETY_FACTOR * 60) when MArk was evaluated. `capacity_rps` is
  MAX_RPS, what a load test of the endpoint finds: its capacity at the SLO
  (`provisioner.policy.capacity`), batched when the endpoint's model server batches.
- Target tracking (Application Auto Scaling): scale out when the metric is above the target for
  3 consecutive 1-minute datapoints, scale in when below 90% of it for 15; new capacity =
  ceil(in service * metric / target); ScaleOutCooldown and ScaleInCooldown 300 s (the
  guide's example policy); at least 1 instance.
- One instance type (a production variant has one), on-demand only, billed at SageMaker's ml.*
  price (catalog `sagemaker_prices.json`, about 1.2x EC2's). No spill.

The two configurations (`runner.build_policies`):
- `reactive-cpu`, the paper's: an ml.c5 endpoint serving requests one by one (MArk's SageMaker
  baseline ran c5 CPU endpoints); the c5 type with the lowest ml.* price per unit of unbatched
  capacity at the SLO.
- `reactive`, what a user picks today: the type with the lowest ml.* price per unit of capacity
  with the model server's own batching (SageMaker's TensorFlow Serving container batches
  server-side when `SAGEMAKER_TFS_ENABLE_BATCHING` is set, with `SAGEMAKER_TFS_MAX_BATCH_SIZE`
  and `SAGEMAKER_TFS_BATCH_TIMEOUT_MICROS`, defaults 8 and 1,000 us: github
  aws/sagemaker-tensorflow-serving-container, README "Enabling Batching"); `batching` True, so
  the simulated data plane batches for it. That data plane sizes batches to the SLO and the
  rate (`provisioner.policy.batching`), standing for a user who tuned TF Serving's max batch
  size and timeout to the SLO; one fixed size and timeout fits fewer rates, so if anything
  this flatters the baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from mark.apps.simulator.policies.base import PolicyContext, PolicyDecision
from mark.core.types import InstanceState, Market, Offering
from provisioner.policy.actions import Action, Drain, Launch

__all__ = ["ReactivePolicy", "ReactiveState"]


@dataclass(frozen=True, slots=True)
class ReactiveState:
    above: int = 0
    below: int = 0
    last_scale_out_s: float = -math.inf
    last_scale_in_s: float = -math.inf


@dataclass(frozen=True)
class ReactivePolicy:
    instance_type: str
    sagemaker_price_per_hour: float
    capacity_rps: float
    batching: bool
    name: str = "reactive"
    safety_factor: float = 0.5
    scale_out_datapoints: int = 3
    scale_in_datapoints: int = 15
    scale_in_ratio: float = 0.9
    scale_out_cooldown_s: float = 300.0
    scale_in_cooldown_s: float = 300.0
    min_instances: int = 1
    interval_s: float = 60.0
    spill: bool = False
    interruptible: bool = True
    terminates_drained: bool = False

    def initial_state(self) -> ReactiveState:
        return ReactiveState()

    def price_per_hour(self, offering: Offering) -> float:
        return self.sagemaker_price_per_hour

    @property
    def target_per_minute(self) -> float:
        return self.capacity_rps * self.safety_factor * 60.0

    def decide(self, ctx: PolicyContext, state: ReactiveState) -> PolicyDecision:
        target = self.target_per_minute
        active = ctx.active()
        in_service = [i for i in active if i.state == InstanceState.RUNNING]
        per_minute = ctx.metrics.arrivals_since(ctx.now_s - 60.0)
        metric = per_minute / max(len(in_service), 1)
        above = state.above + 1 if metric > target else 0
        below = state.below + 1 if metric < self.scale_in_ratio * target else 0
        desired = max(self.min_instances, math.ceil(len(in_service) * metric / target - 1e-9))
        actions: list[Action] = []
        now = ctx.now_s
        if not active:
            desired = max(desired, math.ceil(per_minute / target - 1e-9), self.min_instances)
        if (
            (above >= self.scale_out_datapoints or not active)
            and desired > len(active)
            and now - state.last_scale_out_s >= self.scale_out_cooldown_s
        ):
            offering = ctx.offerings.cheapest(self.instance_type, Market.ON_DEMAND)
            if offering is not None:
                actions.extend(
                    Launch(ctx.model.name, offering, "target tracking: scale out", 0.0)
                    for _ in range(desired - len(active))
                )
                state = replace(state, last_scale_out_s=now)
                above = 0
        elif (
            below >= self.scale_in_datapoints
            and desired < len(active)
            and now - state.last_scale_in_s >= self.scale_in_cooldown_s
            and now - state.last_scale_out_s >= self.scale_out_cooldown_s
        ):
            newest = sorted(
                active, key=lambda i: (i.state == InstanceState.RUNNING, -i.launched_at_s, i.id)
            )
            actions.extend(
                Drain(i.id, ctx.model.name, "target tracking: scale in")
                for i in newest[: len(active) - desired]
            )
            state = replace(state, last_scale_in_s=now)
            below = 0
        return PolicyDecision(tuple(actions), replace(state, above=above, below=below))
