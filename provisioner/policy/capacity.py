"""Capacity at the SLO: the largest arrival rate one instance can take for a model while at
least `slo.percentile` of its requests finish within `slo.latency_ms` (DESIGN.md, "Capacity at
the SLO"; MArk used profiled peak throughput instead).

The model of one instance (documented approximation):
- It has c = `profile.parallelism` parallel servers. At arrival rate lambda the batcher forms
  batches of b = `slo_batch(profile, budget, lambda, max_batch).size` requests, budget being the
  data plane's (`slo_budget_ms`: the SLO latency times `BatchingConfig.slo_budget_fraction`),
  so b is the one the front end and the simulator run; each is served in the deterministic time
  T(b) = a + c*b of the profile. The SLO test itself is against the whole latency.
- Batches reach the servers as an M/D/c queue of batch-units: rate lambda/b, service T(b). Batch
  arrivals are really Erlang-b spaced, more regular than Poisson, so this errs on the safe side.
- A request's latency is max(gather, queue wait) + T(b). The gather ((b-1)/lambda for the
  request that opens a batch) is bounded by the batch timeout, budget - T(b), by construction of
  `slo_batch`; it overlaps the queue wait because while the servers are busy the batch fills from
  the backlog. Adding the two instead would leave no room at all at the rates where slo_batch
  grows b (it sizes b so that gather + T(b) uses the whole budget), so the SLO holds exactly when
  P(W_batch <= SLO - T(b)) >= percentile.

Batches formed from a backlog. Where the fixed cost a exceeds the per-request cost c, the
batcher sends requests that already wait as one batch, up to `backlog_size`
(`batching.backlog_take`), whatever size the rate alone gave. Under load, then, batches grow with
the queue, and one batch of k costs less server time per request than k small ones. So when the
rate's own b fails the test, the check tries the larger batches a backlog can form (b, doublings,
`backlog_size`), each in the same M/D/c of batch-units with no gather time: such a batch is made
of requests that were already queued, so their gather is their queue wait. The smallest one that
meets the SLO is the batch the instance runs there. Without this, the rate-sized b leaves gaps
where no b fits. For example, opennmt-ende on g4dn.xlarge (T(b) = 373 + 8b ms, SLO 1,400 ms,
budget 1,120 ms) fails with b = 1 from 1.28 req/s, before b = 2 fits the budget at 1.37 req/s.
The data plane has no such gap, because its backlog goes together. The simulator runs the real
batcher, backlog rule included, so the evaluation checks this approximation: bench/evaluation.py
reports SLO attainment per run.

The predicate is not monotone in lambda in general (b jumps with the rate), so the search walks
a geometric grid upward from ~0 and bisects the first step where it fails: every rate up to the
returned capacity meets the SLO, not just the capacity itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mark.core.config import BatchingConfig
from mark.core.types import Profile, Slo
from provisioner.policy.batching import slo_batch, slo_budget_ms
from provisioner.policy.queueing import mdc_wait_prob

__all__ = ["SloCapacity", "CapacityCache", "slo_capacity", "capacity_rps", "DEFAULT_CACHE"]

_GRID_RATIO = 1.5
_GRID_DECADES = 7
_REL_TOL = 1e-4
# Never plan an instance closer than this to saturation of its servers.
_MAX_UTILISATION = 0.995
_DEFAULT_BUDGET_FRACTION: float = BatchingConfig().slo_budget_fraction


@dataclass(frozen=True, slots=True)
class SloCapacity:
    """What one instance sustains at the SLO: the rate, and the batch the batcher runs there."""

    rate_rps: float
    batch_size: int
    service_ms: float


_NONE = SloCapacity(rate_rps=0.0, batch_size=1, service_ms=0.0)

CapacityKey = tuple[float, float, int, int, float, float, int]


def _key(profile: Profile, slo: Slo, max_batch: int) -> CapacityKey:
    """Capacity depends on the profile only through its fitted line, batch cap and
    parallelism, so models with equal profiles share one entry whatever their names."""
    return (
        profile.a_ms,
        profile.c_ms,
        profile.max_batch,
        profile.parallelism,
        slo.latency_ms,
        slo.percentile,
        max_batch,
    )


def _meets_slo(
    profile: Profile, slo: Slo, max_batch: int, rate_rps: float, budget_fraction: float
) -> SloCapacity | None:
    """The batch the data plane runs at `rate_rps` when it meets the SLO there, else None: the
    rate's own plan first, then, where the batcher takes a backlog together (a > c,
    `backlog_take`), the larger batches a backlog forms, smallest first (see the module
    docstring)."""
    budget_ms = slo_budget_ms(slo.latency_ms, budget_fraction)
    plan = slo_batch(profile, budget_ms, rate_rps, max_batch)
    for size in _backlog_sizes(plan.size, plan.backlog_size):
        found = _batches_meet(profile, slo, rate_rps, size)
        if found is not None:
            return found
    return None


def _backlog_sizes(size: int, backlog_size: int) -> list[int]:
    """`size`, then doublings up to `backlog_size` (and it): a handful of M/D/c evaluations
    instead of one per batch size."""
    sizes = [size]
    while backlog_size > sizes[-1]:
        sizes.append(min(sizes[-1] * 2, backlog_size))
    return sizes


def _batches_meet(profile: Profile, slo: Slo, rate_rps: float, size: int) -> SloCapacity | None:
    service_ms = profile.service_ms(size)
    room_s = (slo.latency_ms - service_ms) / 1000.0
    if room_s < 0:
        return None
    service_s = service_ms / 1000.0
    batch_rate = rate_rps / size
    if batch_rate * service_s >= _MAX_UTILISATION * profile.parallelism:
        return None
    if mdc_wait_prob(batch_rate, service_s, profile.parallelism, room_s) < slo.percentile:
        return None
    return SloCapacity(rate_rps=rate_rps, batch_size=size, service_ms=service_ms)


def _search(profile: Profile, slo: Slo, max_batch: int, budget_fraction: float) -> SloCapacity:
    if profile.service_ms(1) > slo.latency_ms:
        return _NONE
    cap = max(1, min(max_batch, profile.max_batch))
    ceiling_rps = profile.parallelism * cap / (profile.service_ms(cap) / 1000.0)
    low = ceiling_rps * _GRID_RATIO ** -math.ceil(_GRID_DECADES / math.log10(_GRID_RATIO))
    best = _meets_slo(profile, slo, max_batch, low, budget_fraction)
    if best is None:
        high, low = low, 0.0
        best = _NONE
    else:
        high = low
        while high < ceiling_rps:
            step = min(high * _GRID_RATIO, ceiling_rps)
            found = _meets_slo(profile, slo, max_batch, step, budget_fraction)
            if found is None:
                high = step
                break
            best, low, high = found, step, step
        else:
            return best
    while high - low > _REL_TOL * high:
        mid = 0.5 * (low + high)
        found = _meets_slo(profile, slo, max_batch, mid, budget_fraction)
        if found is None:
            high = mid
        else:
            best, low = found, mid
    return best


class CapacityCache:
    """Capacities keyed by value (fitted profile line, SLO, batch cap). The planner asks for
    every (model, type) pair each tick; the M/D/c search runs once per distinct key.

    `budget_fraction` is the data plane's `BatchingConfig.slo_budget_fraction`: every entry
    sizes batches against that budget, so build the cache from the config the front end and
    the simulator batch with."""

    def __init__(self, *, budget_fraction: float = _DEFAULT_BUDGET_FRACTION) -> None:
        if not 0 < budget_fraction <= 1:
            raise ValueError(f"budget_fraction must be in (0, 1], got {budget_fraction!r}")
        self.budget_fraction = budget_fraction
        self._entries: dict[CapacityKey, SloCapacity] = {}
        # The same Profile and Slo objects come back every tick: skip building the value key.
        self._by_identity: dict[tuple[int, int, int], tuple[Profile, Slo, SloCapacity]] = {}

    def get(self, profile: Profile, slo: Slo, max_batch: int) -> SloCapacity:
        seen = self._by_identity.get((id(profile), id(slo), max_batch))
        if seen is not None and seen[0] is profile and seen[1] is slo:
            return seen[2]
        key = _key(profile, slo, max_batch)
        found = self._entries.get(key)
        if found is None:
            found = _search(profile, slo, max_batch, self.budget_fraction)
            self._entries[key] = found
        self._by_identity[(id(profile), id(slo), max_batch)] = (profile, slo, found)
        return found

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self._by_identity.clear()


DEFAULT_CACHE = CapacityCache()


def slo_capacity(
    profile: Profile, slo: Slo, max_batch: int, cache: CapacityCache | None = None
) -> SloCapacity:
    """Rate, batch size and batch service time of one instance at the SLO (cached)."""
    return (DEFAULT_CACHE if cache is None else cache).get(profile, slo, max_batch)


def capacity_rps(profile: Profile, slo: Slo, max_batch: int) -> float:
    """Largest arrival rate (req/s) one instance sustains with P(latency > SLO) <= 1 -
    percentile, batching with the default budget (DEFAULT_CACHE); 0.0 when the type cannot
    meet the SLO even unloaded."""
    return slo_capacity(profile, slo, max_batch).rate_rps
