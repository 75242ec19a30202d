"""The spill rule (MArk's "Bouncer") for one queued request, shared by the front end and the
simulator through `provisioner.policy.dataplane.select_spills`, which walks a queue with it.

For a queued request, its expected completion on the instances is

    now + position / service_rate + T(b)

(position: requests ahead of it on its instance, in flight included; service_rate: that
instance's throughput at its current batch size; T(b) = a + c*b: the service time of the batch it
will ride in; DESIGN.md, "Spill"). When that is past `deadline - margin`, and the
serverless pool can still answer before the deadline (warm latency, plus a cold start when no
warm function is idle), the request goes to the pool.

A request the instances would answer only after its deadline, while the pool cannot answer
before it either, misses both ways; it goes to the pool all the same ("overload"). Kept in line
it would delay every request behind it: a model whose pool is slower than its SLO would hold the
whole of an overload in a queue that grows until capacity boots, and every request behind the
excess would miss too. Spilled, the excess leaves the queue at the deadline's length, so the
requests the instances can serve in time meet their deadline: an overload misses its excess,
not its whole demand (the excess is answered late by the pool, not dropped).

Two more reasons spill without the deadline test, because the alternative is a wait measured in
minutes (an EC2 launch) rather than milliseconds:
- "cold-fleet": the model has no running instance yet (just registered, scaled from zero, or
  every instance still booting);
- "draining": the instance holding the request drains (an interruption's two-minute notice, or
  the planner retiring it).
Both still need a free slot in the pool; they do not need the latency to fit the deadline, since a
late answer beats none.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from mark.core.types import Slo

__all__ = [
    "SpillReason",
    "QueueView",
    "ServerlessProfile",
    "expected_completion_s",
    "serverless_completion_s",
    "spill_reason",
]


class SpillReason(StrEnum):
    DEADLINE = "deadline"
    OVERLOAD = "overload"
    COLD_FLEET = "cold-fleet"
    DRAINING = "draining"


@dataclass(frozen=True, slots=True)
class QueueView:
    """One instance's queue as the rule sees it, the same for the front end and the simulator.

    `ahead` counts requests sent to the instance and not answered yet; `service_rate_rps` is
    the instance's throughput at its current plan (`provisioner.policy.dataplane.service_rate_rps`,
    parallelism * b / T(b)); `batch_service_ms` is T(b) of that plan; `running_instances` counts
    the model's instances in state RUNNING (0: none yet, every request spills as cold-fleet);
    `draining` is true while the instance drains after an interruption notice or a drain.
    The default view is that of a model with no running instance.
    """

    ahead: int = 0
    service_rate_rps: float = 0.0
    batch_service_ms: float = 0.0
    running_instances: int = 0
    draining: bool = False


@dataclass(frozen=True, slots=True)
class ServerlessProfile:
    """The pool's latency profile as the spill rule sees it: the observed warm latency of one
    invocation (handler plus transport), the observed cold start (a fresh process or Lambda
    sandbox loading the model), and how many functions are idle-warm and free right now."""

    warm_ms: float
    cold_start_ms: float
    idle_warm: int
    free_slots: int
    enabled: bool = True

    def latency_ms(self) -> float:
        """Expected latency of the next invocation: warm when a warm function is idle."""
        return self.warm_ms if self.idle_warm > 0 else self.warm_ms + self.cold_start_ms


def expected_completion_s(queue: QueueView, position: int, now_s: float) -> float:
    """now + position / service_rate + T(b) for a request with `position` requests ahead of it
    (those in flight included); infinite when no instance serves the model."""
    if queue.running_instances <= 0 or queue.service_rate_rps <= 0:
        return float("inf")
    return now_s + position / queue.service_rate_rps + queue.batch_service_ms / 1000.0


def serverless_completion_s(pool: ServerlessProfile, now_s: float) -> float:
    return now_s + pool.latency_ms() / 1000.0


def spill_reason(
    queue: QueueView,
    position: int,
    deadline_s: float,
    now_s: float,
    slo: Slo,
    pool: ServerlessProfile,
    margin_ms: float,
) -> SpillReason | None:
    """Why a request due at `deadline_s`, `position` requests ahead of it on `queue`, should go
    to the serverless pool now, or None to keep it queued.

    `slo` bounds the margin: a margin longer than the SLO itself would spill everything, so it
    is capped at the SLO latency.
    """
    if not pool.enabled or pool.free_slots <= 0:
        return None
    if queue.running_instances <= 0 or queue.service_rate_rps <= 0:
        return SpillReason.COLD_FLEET
    if queue.draining:
        return SpillReason.DRAINING
    margin_s = min(margin_ms, slo.latency_ms) / 1000.0
    queued = expected_completion_s(queue, position, now_s)
    if queued <= deadline_s - margin_s:
        return None
    spilled = serverless_completion_s(pool, now_s)
    if spilled <= deadline_s:
        return SpillReason.DEADLINE
    if queued > deadline_s:
        return SpillReason.OVERLOAD
    return None
