"""The seam to a serverless pool (MArk's Lambda path): the `ServerlessPool` protocol, what one
invocation returns (`Invocation`, billed as Lambda bills it), the latency and load a pool
observes for the spill rule (`PoolStats`), and the errors its callers branch on.

Implementations: `local.LocalFunctionPool` (Lambda's execution model on this machine) and
`lambda_pool.LambdaPool` (AWS Lambda, or the local pool through its Invoke API).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from mark.core.errors import CloudError, MarkError
from provisioner.policy.spill import ServerlessProfile

if TYPE_CHECKING:
    from mark.core.catalog import LambdaPricing

__all__ = [
    "ServerlessPool",
    "Invocation",
    "PoolStats",
    "PayloadTooLarge",
    "Throttled",
    "FunctionError",
    "InputRejected",
    "load_pricing",
    "billed_duration_ms",
    "ping_warm",
]

_EWMA_WEIGHT = 0.2


class PayloadTooLarge(MarkError):
    """The event or the result is over Lambda's synchronous payload limit (6 MB): HTTP 413."""

    status = 413


class Throttled(CloudError):
    """Every sandbox is busy (Lambda's TooManyRequestsException, HTTP 429)."""


class FunctionError(CloudError):
    """The function ran and failed: it raised, timed out, or passed its memory size."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type


class InputRejected(MarkError):
    """The function refused the request as not fitting the model (the caller's mistake: 400).
    The invocation ran and is billed: `invocation` carries its cost."""

    status = 400

    def __init__(self, message: str, invocation: Invocation) -> None:
        super().__init__(message)
        self.message = message
        self.invocation = invocation


@dataclass(frozen=True, slots=True)
class Invocation:
    """One finished invocation: the handler's result and what Lambda would bill for it."""

    request_id: str
    result: Mapping[str, Any]
    duration_ms: float
    init_ms: float
    billed_ms: float
    memory_mb: int
    max_memory_used_mb: float
    cost_usd: float

    @property
    def cold_start(self) -> bool:
        return self.init_ms > 0

    @property
    def gb_seconds(self) -> float:
        return self.billed_ms / 1000.0 * self.memory_mb / 1024.0


@runtime_checkable
class ServerlessPool(Protocol):
    name: str
    memory_mb: int
    observed: PoolStats

    async def invoke(self, event: Mapping[str, Any]) -> Invocation:
        """Run the handler on `event` (RequestResponse). Raises PayloadTooLarge, Throttled,
        FunctionError, or CloudError for transport failures."""
        ...

    def profile(self, model: str, default_warm_ms: float) -> ServerlessProfile:
        """The pool as the spill rule sees it for `model`; `default_warm_ms` stands in for the
        warm latency until one has been observed."""
        ...

    async def warm(self, model: str, artifact: str, count: int) -> list[Invocation]:
        """Load `model` in up to `count` sandboxes before a surge (`ping_warm`); the pings that
        ran, each billed as an invocation."""
        ...

    async def close(self) -> None: ...


async def ping_warm(
    pool: ServerlessPool, model: str, artifact: str, count: int, concurrency: int
) -> list[Invocation]:
    """MArk's pre-warming: `count` concurrent pings (at most the pool's `concurrency`), each a
    warm-only event the handler answers once the model is loaded, so that as many sandboxes
    hold it when the surge comes. Lambda gives no other way to hold sandboxes warm, and only
    overlapping invocations land in different sandboxes, hence concurrent. A ping that fails is
    left out: warming is an optimisation."""
    pings = [
        pool.invoke({"model": model, "artifact": artifact, "warm": True})
        for _ in range(min(count, concurrency))
    ]
    results = await asyncio.gather(*pings, return_exceptions=True)
    return [r for r in results if isinstance(r, Invocation)]


def load_pricing() -> LambdaPricing:
    """Lambda's prices and limits from the packaged catalog (`lambda_pricing.json`)."""
    from mark.core.catalog import load_catalog

    return load_catalog().lambda_pricing


def billed_duration_ms(ms: float, granularity_ms: float) -> float:
    """`ms` rounded up to the billing granularity (Lambda: 1 ms)."""
    return math.ceil(ms / granularity_ms - 1e-9) * granularity_ms


@dataclass(slots=True)
class PoolStats:
    """Latency and load as observed by one pool: EWMA of warm latency per model and of cold
    starts, invocations in flight, and recent peaks (the Lambda pool's warm-sandbox estimate)."""

    cold_start_ms: float
    warm_ms: dict[str, float] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=dict)
    recent_peak: dict[str, tuple[int, float]] = field(default_factory=dict)
    spent_usd: float = 0.0
    invocations: int = 0
    cold_starts: int = 0

    def started(self, model: str, now_s: float) -> None:
        count = self.in_flight.get(model, 0) + 1
        self.in_flight[model] = count
        peak, _ = self.recent_peak.get(model, (0, now_s))
        self.recent_peak[model] = (max(peak, count), now_s)

    def finished(self, model: str, wall_ms: float | None, invocation: Invocation | None) -> None:
        self.in_flight[model] = max(self.in_flight.get(model, 1) - 1, 0)
        if invocation is None or wall_ms is None:
            return
        self.invocations += 1
        self.spent_usd += invocation.cost_usd
        if invocation.cold_start:
            self.cold_starts += 1
            self.cold_start_ms += _EWMA_WEIGHT * (invocation.init_ms - self.cold_start_ms)
            wall_ms -= invocation.init_ms
        previous = self.warm_ms.get(model)
        self.warm_ms[model] = (
            wall_ms if previous is None else previous + _EWMA_WEIGHT * (wall_ms - previous)
        )

    def total_in_flight(self) -> int:
        return sum(self.in_flight.values())
