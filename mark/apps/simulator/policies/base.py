"""What every simulated policy sees and returns (STYLE.md: a policy is a function of a context,
after Ray Serve's AutoscalingContext; what it must remember goes back out as state).

A policy is a frozen value holding its parameters, with `initial_state()` and a pure
`decide(ctx, state) -> PolicyDecision`: no I/O, no clock (`ctx.now_s` is the time). Actions are
the planner's own `Launch | Drain | Terminate`, so the engine applies every policy the way the
control loop applies the planner.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from mark.core.types import Instance, InstanceState, InstanceType, Model, Offering
from provisioner.policy.actions import Action
from provisioner.policy.capacity import CapacityCache, slo_capacity
from provisioner.policy.offerings import Offerings

__all__ = [
    "Metrics",
    "PolicyContext",
    "PolicyDecision",
    "Policy",
    "unbatched_capacity_rps",
    "cheapest_type",
    "batched_capacity_rps",
    "ceil_div",
]


@dataclass(frozen=True, slots=True)
class Metrics:
    """What monitoring has recorded up to now, in windows of `window_s`: arrivals per window and
    the time-average number of requests in the system (queued or in service) per window."""

    window_s: float
    starts_s: np.ndarray
    arrivals: np.ndarray
    ongoing: np.ndarray

    def arrivals_since(self, since_s: float) -> float:
        return float(self.arrivals[self.starts_s >= since_s - 1e-9].sum())

    def last(self, windows: int) -> tuple[np.ndarray, np.ndarray]:
        """(arrivals, ongoing) of the newest `windows` windows."""
        return self.arrivals[-windows:], self.ongoing[-windows:]


@dataclass(frozen=True, slots=True)
class PolicyContext:
    """The snapshot one decision sees. `instances` are the live ones (pending, running,
    draining); `offerings` is the market's one collection (`Offerings.cheapest` is how a
    baseline picks where to launch); `interruptions` maps spot instances with a 2-minute notice
    to the time the cloud takes them back; `reclaimed` maps each pool (offering key) to its
    latest reclaim time. `warm_start`: the decision that sets up the fleet the run starts with
    (its launches are ready at once); a policy with per-tick launch caps lifts them there, since
    a system that ran before the window built that fleet over as many ticks as it took."""

    now_s: float
    model: Model
    instances: tuple[Instance, ...]
    instance_types: Mapping[str, InstanceType]
    offerings: Offerings
    metrics: Metrics
    cache: CapacityCache
    interruptions: Mapping[str, float] = field(default_factory=dict)
    reclaimed: Mapping[str, float] = field(default_factory=dict)
    warm_start: bool = False

    def active(self) -> list[Instance]:
        """Pending and running instances (not draining)."""
        return [
            i for i in self.instances if i.state in (InstanceState.PENDING, InstanceState.RUNNING)
        ]


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """Actions for this tick, the state for the next, how many serverless sandboxes to keep
    warm and the share of arrivals to send straight to the serverless pool."""

    actions: tuple[Action, ...]
    state: Any
    warm_functions: int = 0
    serverless_share: float = 0.0


class Policy(Protocol):
    """A simulated autoscaler. `spill`: its data plane spills to serverless (Mark's, unless
    `SpillConfig.enabled` is off); `batching`: its data plane batches (Mark's unless
    `BatchingConfig.enabled` is off, and the baselines whose model server batches);
    `interruptible`: its spot instances can be reclaimed (the oracle knows and avoids
    reclaims); `terminates_drained`: it terminates drained instances itself (the planner does,
    after drain_s)."""

    # Read-only (properties), so frozen dataclasses conform.
    @property
    def name(self) -> str: ...

    @property
    def interval_s(self) -> float: ...

    @property
    def spill(self) -> bool: ...

    @property
    def batching(self) -> bool: ...

    @property
    def interruptible(self) -> bool: ...

    @property
    def terminates_drained(self) -> bool: ...

    def initial_state(self) -> Any: ...

    def decide(self, ctx: PolicyContext, state: Any) -> PolicyDecision: ...

    def price_per_hour(self, offering: Offering) -> float: ...


def unbatched_capacity_rps(model: Model, type_name: str, cache: CapacityCache) -> float:
    """Capacity at the SLO of one instance serving requests one by one (no batching), what a
    load test of an unbatched endpoint finds."""
    profile = model.profiles.get(type_name)
    if profile is None:
        return 0.0
    return slo_capacity(profile, model.slo, 1, cache).rate_rps


def batched_capacity_rps(model: Model, type_name: str, cache: CapacityCache) -> float:
    profile = model.profiles.get(type_name)
    if profile is None:
        return 0.0
    return slo_capacity(profile, model.slo, model.max_batch, cache).rate_rps


def cheapest_type(
    model: Model,
    prices_per_hour: Mapping[str, float],
    cache: CapacityCache,
    *,
    batching: bool,
) -> tuple[str, float]:
    """The type with the lowest price per unit of capacity at the SLO among `prices_per_hour`
    (the one type a user of a single-type autoscaler would pick), and its capacity."""
    best: tuple[float, str, float] | None = None
    for name, price in sorted(prices_per_hour.items()):
        cap = (batched_capacity_rps if batching else unbatched_capacity_rps)(model, name, cache)
        if cap <= 0:
            continue
        if best is None or price / cap < best[0]:
            best = (price / cap, name, cap)
    if best is None:
        raise ValueError(f"no instance type can meet the SLO of {model.name}")
    return best[1], best[2]


def ceil_div(value: float, unit: float) -> int:
    return max(0, math.ceil(value / unit - 1e-9))
