"""`queue` and `queue-batch`: autoscaling on ongoing requests per replica, as Ray Serve, Cortex
and Knative do, with Ray Serve's defaults (python/ray/serve/config.py AutoscalingConfig and
python/ray/serve/autoscaling_policy.py, DESIGN.md "Peers"):

- target_ongoing_requests 2 per replica (the default since Ray 2.32); metrics pushed every 10 s
  (metrics_interval_s), averaged over a 30 s look-back (look_back_period_s);
- desired replicas = ceil(total ongoing / target), at least min_replicas (1 here, so the
  comparison with the others is not about scale-to-zero) and at most max_replicas. Ray's
  default max_replicas is 1, so every user sets it; here it is twice the replicas the trace's
  peak needs at the capacity the replica serves with (`runner.build_policies`). Without a
  bound the policy runs away whenever replicas take minutes to start: requests queued
  meanwhile count as ongoing, and tens of thousands of replicas are asked for;
- upscale_delay_s 30 and downscale_delay_s 600: a decision counter, as in
  `_apply_delay_logic`, must point the same way for that long before the count changes;
- one replica per instance, on-demand, of the type with the lowest EC2 price per unit of
  capacity at the SLO; no spill. Not predictive. Scale-down removes pending replicas first,
  then the newest.

`queue` serves requests one by one (Ray's `@serve.batch` is opt-in). `queue-batch` is the
deployment with `@serve.batch` on its handler (ray/serve/batching.py; defaults
max_batch_size 10, batch_wait_timeout_s 0.01): `batching` True, so the simulated data plane
batches for it, and its type and max_replicas come from the batched capacity at the SLO. The
data plane's batcher sizes batches to the SLO (`provisioner.policy.batching`), standing for a
user who tuned max_batch_size and batch_wait_timeout_s to it. The autoscaler is unchanged:
each request of a batch, gathering or in service, counts as ongoing against the default
target of 2 (Ray's autoscaling guide leaves the target to a load test; this baseline keeps the
default, as it keeps Ray's other settings).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mark.apps.simulator.policies.base import PolicyContext, PolicyDecision
from mark.core.types import InstanceState, Market, Offering
from provisioner.policy.actions import Action, Drain, Launch

__all__ = ["QueuePolicy"]


@dataclass(frozen=True)
class QueuePolicy:
    instance_type: str
    name: str = "queue"
    target_ongoing_requests: float = 2.0
    metrics_interval_s: float = 10.0
    look_back_period_s: float = 30.0
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0
    min_replicas: int = 1
    max_replicas: int = 1000
    spill: bool = False
    batching: bool = False
    interruptible: bool = True
    terminates_drained: bool = False

    @property
    def interval_s(self) -> float:
        return self.metrics_interval_s

    def initial_state(self) -> int:
        return 0  # the decision counter

    def price_per_hour(self, offering: Offering) -> float:
        return offering.price_per_hour

    def decide(self, ctx: PolicyContext, state: int) -> PolicyDecision:
        windows = max(1, round(self.look_back_period_s / ctx.metrics.window_s))
        arrivals, ongoing = ctx.metrics.last(windows)
        active = ctx.active()
        current = len(active)
        total_ongoing = float(ongoing.mean()) if ongoing.size else 0.0
        if not ctx.instances and arrivals.size:
            # Cold start (no replica has reported yet): size from the request rate by Little's
            # law at the target, the count a first deployment would be given.
            rate = float(arrivals.sum()) / (arrivals.size * ctx.metrics.window_s)
            profile = ctx.model.profiles[self.instance_type]
            total_ongoing = rate * profile.service_ms(1) / 1000.0 * 2
        wanted = math.ceil(total_ongoing / self.target_ongoing_requests)
        desired = min(max(self.min_replicas, wanted), self.max_replicas)
        counter = state
        actions: list[Action] = []
        if not ctx.instances:
            counter, change = 0, desired
        elif desired > current:
            counter = max(counter, 0) + 1
            change = desired if counter * self.interval_s > self.upscale_delay_s else current
        elif desired < current:
            counter = min(counter, 0) - 1
            change = desired if -counter * self.interval_s > self.downscale_delay_s else current
        else:
            counter, change = 0, current
        if change > current:
            offering = ctx.offerings.cheapest(self.instance_type, Market.ON_DEMAND)
            if offering is not None:
                actions.extend(
                    Launch(ctx.model.name, offering, "ongoing requests above target", 0.0)
                    for _ in range(change - current)
                )
            counter = 0
        elif change < current:
            order = sorted(
                active, key=lambda i: (i.state == InstanceState.RUNNING, -i.launched_at_s, i.id)
            )
            actions.extend(
                Drain(i.id, ctx.model.name, "ongoing requests below target")
                for i in order[: current - change]
            )
            counter = 0
        return PolicyDecision(tuple(actions), counter)
