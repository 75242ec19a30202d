"""What the catalog files hold, as values: Lambda's price list, the models' SLOs and profiles,
and the Spot Advisor's interruption bands as rates."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from mark.core.errors import InvalidValue
from mark.core.types import BackendSpec, Model, Profile, Slo

__all__ = [
    "LambdaPricing",
    "ModelEntry",
    "SPOT_ADVISOR_BANDS",
    "TOP_BAND_STRESS_SHARE",
    "band_rate_per_hour",
]

_MB_PER_GB = 1024.0  # Lambda bills memory_mb / 1024 GB (3008 MB = 2.9375 GB)

# The open-ended top band (">20%") has no upper edge; a stress value of twice its lower edge
# stands in for it, so that the worst band is simulated as worse than the one below it.
TOP_BAND_STRESS_SHARE = 0.40

# The Spot Instance Advisor's "frequency of interruption" bands, each with the monthly share of
# instances interrupted that a simulation takes for it: the band's upper edge (the pessimistic
# end), and the stress value for the open top band.
SPOT_ADVISOR_BANDS: Mapping[str, float] = {
    "<5%": 0.05,
    "5-10%": 0.10,
    "10-15%": 0.15,
    "15-20%": 0.20,
    ">20%": TOP_BAND_STRESS_SHARE,
}

_HOURS_PER_MONTH = 730.0  # AWS's billing month (8,760 h / 12)


def band_rate_per_hour(band: str) -> float:
    """Interruptions per spot instance-hour for a Spot Advisor band: the band's monthly share
    (`SPOT_ADVISOR_BANDS`) / 730 h. Reading the share as a Poisson rate over an instance that
    runs all month is first order (-ln(1 - s) / 730 is 12% higher at 20%, 28% at 40%); the
    upper edge already errs high. So "<5%" is 6.8e-5 per hour and ">20%" 5.5e-4: the
    simulator's default of 0.02 per instance-hour (14.6 per instance-month) is about 36 times
    the stress value of the worst band, a stress test rather than AWS's figures."""
    try:
        share = SPOT_ADVISOR_BANDS[band]
    except KeyError:
        raise InvalidValue(
            "band", f"unknown Spot Advisor band {band!r}; bands: {', '.join(SPOT_ADVISOR_BANDS)}"
        ) from None
    return share / _HOURS_PER_MONTH


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
