"""What the catalog files hold, as values: Lambda's price list and the models' SLOs and
profiles."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from mark.core.errors import InvalidValue
from mark.core.types import BackendSpec, Model, Profile, Slo

__all__ = [
    "LambdaPricing",
    "ModelEntry",
]

_MB_PER_GB = 1024.0  # Lambda bills memory_mb / 1024 GB (3008 MB = 2.9375 GB)


@dataclass(frozen=True, slots=True)
class LambdaPricing:
    """AWS Lambda's price list and limits (x86 and arm), from `lambda_pricing.json`."""

    per_gb_second_usd: float
    per_gb_second_arm_usd: float
    per_request_usd: float
    min_memory_mb: int
    max_memory_mb: int
    max_sync_payload_bytes: int
    timeout_s: float
    billing_granularity_ms: float
    cold_start_ms: float
    source: str
    cold_start_estimated: bool = True

    def charge_usd(self, duration_ms: float, memory_mb: int, arm: bool = False) -> float:
        """What one invocation costs: the request fee plus duration (rounded up to the billing
        granularity, cut at the timeout, where Lambda stops the function) times memory in GB
        (memory_mb / 1024) times the per GB-second price."""
        if not math.isfinite(duration_ms) or duration_ms < 0:
            raise InvalidValue("duration_ms", f"must be a finite number >= 0, got {duration_ms!r}")
        if not self.min_memory_mb <= memory_mb <= self.max_memory_mb:
            raise InvalidValue(
                "memory_mb",
                f"must be within {self.min_memory_mb}-{self.max_memory_mb}, got {memory_mb!r}",
            )
        ran_ms = min(duration_ms, self.timeout_s * 1000.0)
        steps = math.ceil(ran_ms / self.billing_granularity_ms - 1e-9)
        billed_ms = steps * self.billing_granularity_ms
        rate = self.per_gb_second_arm_usd if arm else self.per_gb_second_usd
        return billed_ms / 1000.0 * (memory_mb / _MB_PER_GB) * rate + self.per_request_usd


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """A catalog model: its SLO, its profile per instance type and its serverless latency (the
    function's latency at `serverless_memory_mb`, for the spill rule)."""

    name: str
    slo: Slo
    profiles: Mapping[str, Profile]
    serverless_latency_ms: float
    serverless_estimated: bool
    source: str
    slo_source: str = ""
    serverless_memory_mb: int = 3008

    def to_model(self, backend: BackendSpec | None = None) -> Model:
        """The registrable Model; its max batch is the largest any profile allows."""
        return Model(
            name=self.name,
            slo=self.slo,
            backend=backend if backend is not None else BackendSpec(),
            profiles=dict(self.profiles),
            max_batch=max((p.max_batch for p in self.profiles.values()), default=1),
        )
