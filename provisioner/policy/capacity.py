"""Capacity at the SLO: the largest arrival rate one instance can take for a model while at
least `slo.percentile` of its requests finish within `slo.latency_ms` (DESIGN.md, "Capacity at
the SLO"; MArk used profiled peak throughput instead).

At arrival rate lambda the data plane plans batches with `slo_batch(profile, budget, lambda,
max_batch)`, budget being the data plane's (`slo_budget_ms`: the SLO latency times
`BatchingConfig.slo_budget_fraction`), so the plan is the one the front end and the simulator
run; a batch of k is served in the deterministic time T(k) = a + c*k of the profile. The SLO
test itself is against the whole latency.

One server (`profile.parallelism` 1, every catalog type): the batcher is modelled exactly. With
nothing in flight a batch leaves as soon as a request waits (the front end is work-conserving),
so the plan's timeout never binds; the batch takes what waits, up to `backlog_take(plan, ...,
age of the oldest)`: b, or where a > c up to `backlog_size` as long as the oldest still makes
the budget. `queueing.batch_within_prob` solves that queue (Poisson arrivals, bulk service with
an age-dependent cap) by its embedded chain at batch starts and gives the fraction within the
SLO. It matches the simulator's batcher within the noise of long runs (bench/bench_capacity.py).
The earlier model, an M/D/1 of batch-units of b with Poisson batch arrivals, ignored both that
batch arrivals are Erlang-b spaced and that under load the batch grows with the backlog: it gave
inception-v3 on inf1.xlarge 98 req/s where one instance holds the SLO to ~190, and for
opennmt-ende on p2.xlarge (T(k) = 590 + 20k ms) it gave 1.2 req/s where the batcher meets the
SLO only to ~0.53, because a backlog whose oldest request has waited long leaves in small
batches (the budget cap of `backlog_take`).

Two margins, because the planner's rate is a forecast and the SLO is judged over finite runs:
the capacity is the largest rate at which, with `_HEADROOM` (5%) more traffic, the misses stay
within `_MISS_SHARE` (95%) of the allowance. At the exact edge half of all runs would miss, and
by much near saturation, where the queue relaxes over thousands of batches: inception-v3 on
p2.xlarge (whose backlog batches shrink as the oldest request ages) met 97.8% to 99.2% in
100,000-request runs at its edge. The headroom covers such steep edges (where misses rise fast
with the rate); the share covers flat ones, such as opennmt-ende on c5.xlarge (T(1) = 1,200 ms
against a 1,400 ms SLO), whose misses grow only in proportion to the rate.

Several servers (parallelism > 1, no catalog type yet): batches reach the servers as an M/D/c
queue of batch-units, rate lambda/b, service T(b), and the SLO holds when P(W_batch <= SLO -
T(b)) >= percentile (the gather overlaps the queue wait: while the servers are busy the batch
fills from the backlog). Where a > c the check also tries the larger batches a backlog forms (b,
doublings, `backlog_size`), with no gather time, and takes the smallest that meets the SLO. For
b = 1 that is the FCFS M/D/c queue the batcher runs; for larger batches it errs on the safe side
(batch arrivals are Erlang-b spaced, and a backlog goes together): in the simulator's batcher
profiles with a > c and 2 or 4 servers still met the SLO at 1.25 times it. The same margins
apply.

The predicate is not monotone in lambda in general (b jumps with the rate), so the search walks
a geometric grid upward from a thousandth of the throughput ceiling and bisects the first step
where it fails: every grid rate up to the returned capacity meets the SLO, not just the
capacity itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

from mark.core.config import BatchingConfig
from mark.core.types import Profile, Slo
from provisioner.policy.batching import BatchPlan, backlog_take, slo_batch, slo_budget_ms
from provisioner.policy.queueing import batch_within_prob, mdc_wait_prob

__all__ = ["SloCapacity", "CapacityCache", "slo_capacity", "capacity_rps", "DEFAULT_CACHE"]

_GRID_RATIO = 1.5
_GRID_DECADES = 3
_REL_TOL = 1e-3
# Never plan an instance closer than this to saturation of its servers.
_MAX_UTILISATION = 0.995
# At this multiple of the capacity the misses stay within this share of the allowance,
# 1 - percentile (module docstring).
_HEADROOM = 1.05
_MISS_SHARE = 0.95
# More waiting than any batch takes: `backlog_take` then gives its cap.
_DEEP_QUEUE = 1 << 30
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
    """The batch the data plane runs at `rate_rps` when the SLO holds there with the margins
    (`_HEADROOM` more traffic, `_MISS_SHARE` of the allowance), else None. One server: the
    batcher's own queue. Several: the rate's own b first, then, where the batcher takes a
    backlog together (a > c, `backlog_take`), the larger batches a backlog forms, smallest
    first (see the module docstring)."""
    budget_ms = slo_budget_ms(slo.latency_ms, budget_fraction)
    plan = slo_batch(profile, budget_ms, rate_rps, max_batch)
    busier = rate_rps * _HEADROOM
    if profile.parallelism == 1:
        if not _one_server_meets(
            profile, slo, busier, slo_batch(profile, budget_ms, busier, max_batch)
        ):
            return None
        # The largest batch the plan forms (what a backlog with a fresh oldest request takes):
        # the one that sets the instance's throughput.
        largest = backlog_take(plan, _DEEP_QUEUE, 0.0)
        return SloCapacity(rate_rps, largest, profile.service_ms(largest))
    for size in _backlog_sizes(plan.size, plan.backlog_size):
        if _batches_meet(profile, slo, busier, size):
            return SloCapacity(rate_rps, size, profile.service_ms(size))
    return None


def _within_allowance(within: float, slo: Slo) -> bool:
    return 1.0 - within <= _MISS_SHARE * (1.0 - slo.percentile)


def _one_server_meets(profile: Profile, slo: Slo, rate_rps: float, plan: BatchPlan) -> bool:
    """The SLO test on the queue of the batcher running `plan` at `rate_rps`."""

    def take(waited_ms: float) -> int:
        return backlog_take(plan, _DEEP_QUEUE, waited_ms)

    within = batch_within_prob(rate_rps, profile.a_ms, profile.c_ms, take, slo.latency_ms)
    return _within_allowance(within, slo)


def _backlog_sizes(size: int, backlog_size: int) -> list[int]:
    """`size`, then doublings up to `backlog_size` (and it): a handful of M/D/c evaluations
    instead of one per batch size."""
    sizes = [size]
    while backlog_size > sizes[-1]:
        sizes.append(min(sizes[-1] * 2, backlog_size))
    return sizes


def _batches_meet(profile: Profile, slo: Slo, rate_rps: float, size: int) -> bool:
    """The SLO test on the M/D/c of batch-units of `size` at `rate_rps`."""
    service_ms = profile.service_ms(size)
    room_s = (slo.latency_ms - service_ms) / 1000.0
    if room_s < 0:
        return False
    service_s = service_ms / 1000.0
    batch_rate = rate_rps / size
    if batch_rate * service_s >= _MAX_UTILISATION * profile.parallelism:
        return False
    return _within_allowance(mdc_wait_prob(batch_rate, service_s, profile.parallelism, room_s), slo)


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


@dataclass(frozen=True)
class _Query:
    """A search, equal to another of the same key: the profile and SLO only carry the values."""

    key: CapacityKey
    budget_fraction: float
    profile: Profile = field(compare=False)
    slo: Slo = field(compare=False)


@lru_cache(maxsize=4096)
def _searched(query: _Query) -> SloCapacity:
    """One search per distinct key for every cache of the process: the simulator builds a cache
    per run, and a search costs tens of milliseconds."""
    return _search(query.profile, query.slo, query.key[-1], query.budget_fraction)


class CapacityCache:
    """Capacities keyed by value (fitted profile line, SLO, batch cap). The planner asks for
    every (model, type) pair each tick; the search runs once per distinct key (and once per
    process: caches share their searches).

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
            found = _searched(_Query(key, self.budget_fraction, profile, slo))
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
