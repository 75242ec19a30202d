"""The spill rule (MArk's "Bouncer"), one pure function shared by the front end's queue-time
monitor and the simulator.

For a queued request, its expected completion on the instances is

    now + position / service_rate + T(b)

(position: requests ahead of it in its model's queue; service_rate: the model's running
instances' combined throughput at their current batch size; T(b) = a + c*b: the service time of
the batch it will ride in; DESIGN.md, "Spill"). When that is past `deadline - margin`, and the
serverless pool can still answer before the deadline (warm latency, plus a cold start when no
warm function is idle), the request goes to the pool.

Two more reasons spill without the deadline test, because the alternative is a wait measured in
minutes (an EC2 launch) rather than milliseconds:
- "cold-fleet": the model has no running instance yet (just registered, scaled from zero, or
  every instance still booting);
- "draining": the instance holding the request is in an interruption's two-minute drain.
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
    "should_spill",
]


class SpillReason(StrEnum):
    DEADLINE = "deadline"
    COLD_FLEET = "cold-fleet"
    DRAINING = "draining"


@dataclass(frozen=True, slots=True)
class QueueView:
    """What the monitor knows about one queued request and the instances ahead of it.

    `deadline_s` is the request's arrival plus the SLO latency; `position` counts the requests
    ahead of it (0 at the head); `service_rate_rps` is the sum of the model's running instances'
    throughput at their batch size (b / T(b) each, times their parallel slots);
    `batch_service_ms` is T(b) of the batch it will leave in; `running_instances` counts the
    model's instances in state RUNNING; `draining` is true while the instance it is queued on
    drains after an interruption notice.
    """

    position: int
    deadline_s: float
    service_rate_rps: float
    batch_service_ms: float
    running_instances: int
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


def expected_completion_s(view: QueueView, now_s: float) -> float:
    """now + position / service_rate + T(b); infinite when no instance serves the model."""
    if view.running_instances <= 0 or view.service_rate_rps <= 0:
        return float("inf")
    return now_s + view.position / view.service_rate_rps + view.batch_service_ms / 1000.0


def serverless_completion_s(pool: ServerlessProfile, now_s: float) -> float:
    return now_s + pool.latency_ms() / 1000.0


def spill_reason(
    view: QueueView, now_s: float, slo: Slo, pool: ServerlessProfile, margin_ms: float
) -> SpillReason | None:
    """Why this request should go to the serverless pool now, or None to keep it queued.

    `slo` bounds the margin: a margin longer than the SLO itself would spill everything, so it
    is capped at the SLO latency.
    """
    if not pool.enabled or pool.free_slots <= 0:
        return None
    if view.running_instances <= 0 or view.service_rate_rps <= 0:
        return SpillReason.COLD_FLEET
    if view.draining:
        return SpillReason.DRAINING
    margin_s = min(margin_ms, slo.latency_ms) / 1000.0
    if expected_completion_s(view, now_s) <= view.deadline_s - margin_s:
        return None
    if serverless_completion_s(pool, now_s) > view.deadline_s:
        return None
    return SpillReason.DEADLINE


def should_spill(
    view: QueueView, now_s: float, slo: Slo, pool: ServerlessProfile, margin_ms: float
) -> bool:
    return spill_reason(view, now_s, slo, pool, margin_ms) is not None
