"""The serverless spill pool in virtual time (AWS Lambda as MArk used it; DESIGN.md "Spill").

Each invocation occupies one sandbox for its latency. A sandbox idle for `keep_warm_s` is
reclaimed; an invocation that finds no idle warm sandbox starts a new one and pays the cold start
(catalog `lambda_pricing.json`: `cold_start_ms`, estimated). At most `concurrency` sandboxes run
at once (Lambda's account concurrency). Each invocation is charged by
`LambdaPricing.charge_usd` (per GB-second of its whole duration, init included as Lambda bills
it since 2025, plus the per-request fee).

MArk warms functions with concurrent pings before an expected surge: `keep_warm(n, now_s)`
keeps n sandboxes warm, each ping charged as a 1 ms invocation.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from mark.core.catalog import LambdaPricing
from provisioner.policy.spill import ServerlessProfile

__all__ = ["ServerlessPool"]

_PING_MS = 1.0


@dataclass
class ServerlessPool:
    pricing: LambdaPricing
    warm_ms: float
    memory_mb: int
    keep_warm_s: float = 600.0
    concurrency: int = 1000
    cost_usd: float = 0.0
    invocations: int = 0
    cold_starts: int = 0
    _busy: list[float] = field(default_factory=list)  # heap of busy-until times
    _idle: list[float] = field(default_factory=list)  # heap of idle sandboxes' last-used times
    _warm_target: int = 0
    _pinged_at_s: float = -1e18

    @property
    def cold_start_ms(self) -> float:
        return self.pricing.cold_start_ms

    def _settle(self, now_s: float) -> None:
        while self._busy and self._busy[0] <= now_s:
            heapq.heappush(self._idle, heapq.heappop(self._busy))
        while self._idle and now_s - self._idle[0] > self.keep_warm_s:
            heapq.heappop(self._idle)

    def profile(self, now_s: float) -> ServerlessProfile:
        """The pool as the spill rule sees it at `now_s`."""
        self._settle(now_s)
        return ServerlessProfile(
            warm_ms=self.warm_ms,
            cold_start_ms=self.cold_start_ms,
            idle_warm=len(self._idle),
            free_slots=self.concurrency - len(self._busy),
        )

    def invoke(self, now_s: float) -> float | None:
        """Run one request from `now_s`; its latency in ms, or None when every slot is busy."""
        self._settle(now_s)
        if len(self._busy) >= self.concurrency:
            return None
        if self._idle:
            heapq.heappop(self._idle)
            latency_ms = self.warm_ms
        else:
            latency_ms = self.warm_ms + self.cold_start_ms
            self.cold_starts += 1
        heapq.heappush(self._busy, now_s + latency_ms / 1000.0)
        self.invocations += 1
        self.cost_usd += self.pricing.charge_usd(latency_ms, self.memory_mb)
        return latency_ms

    def keep_warm(self, sandboxes: int, now_s: float) -> None:
        """Keep at least `sandboxes` warm: ping when the target grows or half the keep-warm time
        has passed, starting (cold) the sandboxes that are missing."""
        self._settle(now_s)
        sandboxes = min(sandboxes, self.concurrency)
        due = now_s - self._pinged_at_s >= self.keep_warm_s / 2
        if sandboxes <= 0 or (sandboxes <= self._warm_target and not due):
            self._warm_target = max(sandboxes, 0)
            return
        self._warm_target = sandboxes
        self._pinged_at_s = now_s
        missing = max(sandboxes - len(self._idle) - len(self._busy), 0)
        pings = min(sandboxes, len(self._idle)) + missing
        self.cost_usd += pings * self.pricing.charge_usd(_PING_MS, self.memory_mb)
        refreshed = [now_s] * min(sandboxes, len(self._idle))
        self._idle = sorted(sorted(self._idle)[len(refreshed) :] + refreshed)
        for _ in range(missing):
            heapq.heappush(self._busy, now_s + (self.cold_start_ms + _PING_MS) / 1000.0)
