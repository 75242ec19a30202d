"""The data plane's rules, written once for the front end (frontend/fleet.py and its batchers)
and the simulator (mark/apps/simulator/engine.py), so that the policy evaluated in virtual time
is the one that serves traffic (DESIGN.md, "The flow of data" 2-3):

- `batch_plan`: the batch an instance forms for a model at the rate routed to it, against the
  one SLO budget (`batching.slo_budget_ms`, the budget the capacity computation sizes b with
  too), including the cases without batching (b = 1) and without a profile for the type (send
  what waits at once);
- `routing_weight`: an instance's share of its model's traffic, its capacity at the SLO;
- `service_rate_rps`: what an instance serves per second at a plan, parallelism * b / T(b),
  the rate the spill rule divides a request's position by;
- `select_spills`: which of a queue's requests go to the serverless pool now, the spill rule
  (`spill.spill_reason`) walked over the queue from its head; `last_kept_position` asks the
  same walk how deep a fresh request may queue before it spills (the simulator's fast path).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from mark.core.types import Profile, Slo
from provisioner.policy.batching import BatchPlan, slo_batch, slo_budget_ms
from provisioner.policy.capacity import CapacityCache, slo_capacity
from provisioner.policy.spill import QueueView, ServerlessProfile, SpillReason, spill_reason

__all__ = [
    "MIN_WEIGHT",
    "batch_plan",
    "routing_weight",
    "service_rate_rps",
    "select_spills",
    "last_kept_position",
]

# Weight of an instance that cannot meet the SLO even alone: it still gets a trickle, so that a
# fleet of only such instances serves rather than refusing everything.
MIN_WEIGHT = 1e-3


def batch_plan(
    profile: Profile | None,
    slo: Slo,
    rate_rps: float,
    max_batch: int,
    budget_fraction: float,
    batching: bool = True,
) -> BatchPlan:
    """The plan of one instance for one model at `rate_rps` routed to it.

    With batching off every request leaves alone at once. Without a profile for the instance's
    type there is no T(b) to size b with: whatever waits leaves at once as one batch of up to
    the model's `max_batch` (service time 0: no deadline estimate, so nothing spills for the
    deadline until the request expires). Otherwise `slo_batch` against the SLO budget."""
    if not batching:
        return BatchPlan(1, 0.0, profile.service_ms(1) if profile is not None else 0.0)
    if profile is None:
        return BatchPlan(max_batch, 0.0, 0.0)
    return slo_batch(profile, slo_budget_ms(slo.latency_ms, budget_fraction), rate_rps, max_batch)


def routing_weight(profile: Profile, slo: Slo, max_batch: int, cache: CapacityCache) -> float:
    """Smooth weighted round-robin weight of an instance: its capacity at the SLO (req/s, from
    `cache`, built with the data plane's budget), at least MIN_WEIGHT."""
    return max(slo_capacity(profile, slo, max_batch, cache).rate_rps, MIN_WEIGHT)


def service_rate_rps(parallelism: int, plan: BatchPlan) -> float:
    """Requests per second an instance of `parallelism` servers finishes at `plan`: b per T(b)
    on each server; 0.0 when the plan has no service time (no profile: unknown)."""
    if plan.service_ms <= 0:
        return 0.0
    return parallelism * plan.size * 1000.0 / plan.service_ms


def _reserve(pool: ServerlessProfile) -> ServerlessProfile:
    """The pool after one more invocation starts: one slot fewer, one idle warm sandbox fewer."""
    return replace(pool, free_slots=pool.free_slots - 1, idle_warm=max(pool.idle_warm - 1, 0))


def select_spills(
    deadlines_s: Iterable[float | None],
    queue: QueueView,
    *,
    now_s: float,
    slo: Slo,
    pool: ServerlessProfile,
    margin_ms: float,
) -> tuple[list[tuple[int, SpillReason]], ServerlessProfile]:
    """Which of a queue's requests (their deadlines, head first) go to the pool now: (index,
    reason) pairs, and the pool profile left once their slots are taken.

    A request's position is `queue.ahead` (sent, not answered) plus the requests before it that
    stay; one that spills leaves the queue, so those behind it move up. Each spill takes a slot
    (and an idle warm sandbox), so the pool shrinks as the walk goes and the walk stops when it
    is full. A deadline of None marks a request that must stay (its spill failed before): it
    counts as ahead of the rest. Positions count requests, not rows."""
    chosen: list[tuple[int, SpillReason]] = []
    position = queue.ahead
    for index, deadline_s in enumerate(deadlines_s):
        if pool.free_slots <= 0 or not pool.enabled:
            break
        reason = None
        if deadline_s is not None:
            reason = spill_reason(queue, position, deadline_s, now_s, slo, pool, margin_ms)
        if reason is None:
            position += 1
        else:
            chosen.append((index, reason))
            pool = _reserve(pool)
    return chosen, pool


_ALWAYS = ServerlessProfile(warm_ms=0.0, cold_start_ms=0.0, idle_warm=1, free_slots=1)


def last_kept_position(queue: QueueView, slo: Slo, margin_ms: float) -> int:
    """The largest number of requests ahead at which a request arriving now stays queued
    (`select_spills` with a pool that always fits), -1 when none stays. The rule only spills
    more as the position grows, so it is found by bisection on the rule itself."""

    def keeps(position: int) -> bool:
        at = replace(queue, ahead=position)
        chosen, _ = select_spills(
            (slo.latency_s,), at, now_s=0.0, slo=slo, pool=_ALWAYS, margin_ms=margin_ms
        )
        return not chosen

    if not keeps(0):
        return -1
    low, high = 0, 1
    while keeps(high):
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if keeps(mid) else (low, mid)
    return low
