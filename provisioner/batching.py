"""SLO-aware batch sizing, the one rule shared by the front end's batcher, the capacity
computation and the simulator.

MArk sizes batches offline (grow b while W + T(b) <= RTmax and the batch beats unbatched
throughput); we re-derive b from the rate routed to the instance: the largest b for which the
time to gather it, (b - 1) / rate, plus its service time T(b) fits the budget, capped by the
model's max batch. The batch leaves when full or when its oldest request has waited the timeout.
"""

from __future__ import annotations

from dataclasses import dataclass

from mark.types import Profile

__all__ = ["BatchPlan", "slo_batch"]


@dataclass(frozen=True, slots=True)
class BatchPlan:
    size: int
    timeout_ms: float
    service_ms: float


def slo_batch(profile: Profile, budget_ms: float, rate_rps: float, max_batch: int) -> BatchPlan:
    """Largest b with (b - 1)/rate + T(b) <= budget, at least 1, at most min(max_batch,
    profile.max_batch). The timeout is what remains of the budget after T(b), so a request that
    opens a batch still leaves by its deadline when the batch does not fill."""
    cap = max(1, min(max_batch, profile.max_batch))
    best = 1
    if rate_rps > 0:
        for b in range(2, cap + 1):
            if (b - 1) / rate_rps * 1000.0 + profile.service_ms(b) <= budget_ms:
                best = b
            else:
                break
    service = profile.service_ms(best)
    return BatchPlan(size=best, timeout_ms=max(budget_ms - service, 0.0), service_ms=service)
