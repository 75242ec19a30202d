"""`static`: a fleet provisioned once for the trace's peak and never changed (what a team with
no autoscaler runs). Peak = the largest bucket rate of the trace; count = ceil(peak / capacity
at the SLO) of the on-demand type with the lowest price per unit of capacity. Same data plane
as Mark's (SLO-aware batching), no spill.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mark.apps.simulator.policies.base import PolicyContext, PolicyDecision
from mark.core.types import Market, Offering
from provisioner.policy.actions import Launch

__all__ = ["StaticPolicy"]


@dataclass(frozen=True)
class StaticPolicy:
    instance_type: str
    capacity_rps: float
    peak_rps: float
    name: str = "static"
    interval_s: float = 3600.0
    spill: bool = False
    batching: bool = True
    interruptible: bool = True
    terminates_drained: bool = False

    def initial_state(self) -> bool:
        return False  # launched yet?

    def price_per_hour(self, offering: Offering) -> float:
        return offering.price_per_hour

    def decide(self, ctx: PolicyContext, state: bool) -> PolicyDecision:
        if state:
            return PolicyDecision((), True)
        offering = ctx.offerings.cheapest(self.instance_type, Market.ON_DEMAND)
        if offering is None:
            return PolicyDecision((), False)
        count = max(1, math.ceil(self.peak_rps / self.capacity_rps - 1e-9))
        reason = f"peak {self.peak_rps:.1f} rps / {self.capacity_rps:.1f} rps per instance"
        return PolicyDecision(
            tuple(Launch(ctx.model.name, offering, reason, 0.0) for _ in range(count)), True
        )
