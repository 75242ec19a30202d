"""The per-model core of MArk's greedy provisioning (paper, Algorithm 1), vectorised over the
candidates so that a 1,000-model fleet plans in milliseconds.

Demand is the forecast's upper quantile in buckets over the horizon. Candidates are the model's
live instances (launch cost 0, already-paid time free) and every eligible offering (which pays
from now, launch overhead included, before it serves). While some bucket is unserved, take the
first window [tau, e) of consecutive unserved buckets and add the candidate with the lowest

    cost per request = cost of holding it from now to e / sum over the window of
                       min(unserved rate, its capacity) * bucket length   (requests)

counting only buckets it is ready for. A window no candidate can serve (every launch would be
too late, or caps exclude all) is left uncovered and reported. Spot candidates obey two caps
per model: all spot capacity <= spot_max_share * peak demand, and each pool's spot capacity <=
that cap / spot_min_pools, so spot is spread over at least spot_min_pools pools; the first
instance of a pool is exempt while some of the spot share is left (one accelerator instance
often exceeds a pool's share of a model's demand), but not once it is spent. Whatever spot
is taken, the plan is hedged as SpotHedge does (Mao et al., EuroSys 2025): losing any one spot
pool must leave 1 - spot_max_share / spot_min_pools of the demand covered, and the greedy goes
on buying, outside that pool, until it does. With small instances the caps already guarantee
this; with large ones the hedge is what buys a second spot instance in another pool, still
cheaper than one on-demand instance at typical discounts.
Backup types are considered only when no primary candidate can serve the window.

The serverless pool is one more candidate for the demand the model's most cost-efficient type
cannot be ready for (MArk: "instead of overprovisioning IaaS, use FaaS to handle demand surge
and spikes"), where its latency fits the SLO: it serves any share of a window up to its
concurrency at a fixed price per request, needs no lead time and bills nothing idle. When the
cheapest instance for such a window costs at least that per request (a stopgap that pays its
boot and billing minimum for the few minutes until the efficient type is ready), the window is
planned for the pool (`Cover.spill_rps`) up to the rate its concurrency carries, and stopgaps
are bought for the rest only (a window larger than the pool's concurrency was bought whole as
stopgaps, the share the pool could have carried more cheaply included). Later buckets stay with
instances: there the forecast's upper quantile already prices the risk of spilling, and the
efficient type serves steady demand for a fraction of the pool's price per request. The hedge
against a pool's loss is never handed to the pool (capacity held against a risk, not demand).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from mark.core.types import Forecast

__all__ = ["Demand", "Candidates", "Cover", "demand_buckets", "cover_demand"]

_EPS_RPS = 1e-9


@dataclass(frozen=True, slots=True)
class Demand:
    """Upper-quantile demand (req/s) in planning buckets starting at now."""

    now_s: float
    starts_s: np.ndarray
    durations_s: np.ndarray
    upper_rps: np.ndarray
    # The first bucket that takes the upper quantile (before it: the mean, see demand_buckets);
    # the spot hedge applies from there too.
    tail_from: int = 0

    @property
    def peak_rps(self) -> float:
        return float(np.maximum.reduce(self.upper_rps, initial=0.0))


@functools.lru_cache(maxsize=64)
def _grid(now_s: float, width_s: float, horizon_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Bucket starts and lengths over the horizon. Every model whose forecast has the same
    bucket width gets the same grid in one plan, so it is built once and shared (read-only)."""
    count = max(1, math.ceil(horizon_s / width_s - 1e-9))
    durations = np.array([min(width_s, horizon_s - width_s * k) for k in range(count)])
    starts = now_s + width_s * np.arange(count)
    starts.setflags(write=False)
    durations.setflags(write=False)
    return starts, durations


def demand_buckets(
    forecast: Forecast,
    now_s: float,
    horizon_s: float,
    mean_before_s: float = -math.inf,
) -> Demand:
    """Resample the forecast onto buckets of its own width starting at now, each taking the
    largest rate of the forecast buckets it overlaps (before the forecast: its first value;
    after it: its last), so a peak between bucket edges is never averaged away. Buckets that
    start before `mean_before_s` take the mean forecast, the others the upper quantile (the
    planner passes the lead time of the model's most cost-efficient type: see planner.py).
    Every bucket takes at least the rate observed last (`forecast.observed_rps`): capacity is
    released on a drop seen, not on a drop forecast. A forecast below the current rate is most
    often a trend extrapolated from a level shift, or a smoother still catching up with a jump
    (both seen on regime-switching traffic): released or not bought on its word, the capacity
    could not be back before the efficient type's lead time if the drop does not come, while
    waiting for the drop to be seen costs one bucket of the instances' time."""
    width = forecast.bucket_s
    starts, durations = _grid(now_s, width, horizon_s)
    upper = _resample(forecast.upper_rps, forecast.start_s, width, now_s, horizon_s, durations)
    tail_from = 0
    if mean_before_s > now_s:
        near = starts < mean_before_s
        tail_from = int(np.count_nonzero(near))
        mean = _resample(forecast.mean_rps, forecast.start_s, width, now_s, horizon_s, durations)
        upper = np.where(near, np.minimum(mean, upper), upper)
    if forecast.observed_rps is not None:
        upper = np.maximum(upper, forecast.observed_rps)
    return Demand(now_s, starts, durations, upper, tail_from)


def _resample(
    values: tuple[float, ...],
    start_s: float,
    width: float,
    now_s: float,
    horizon_s: float,
    durations: np.ndarray,
) -> np.ndarray:
    count = len(durations)
    out = [0.0] * count
    offset = (now_s - start_s) / width
    if values and offset == int(offset) and 0 <= offset and horizon_s % width == 0:
        # Aligned grid (the control loop asks for forecasts starting now): a plain slice.
        part = list(values[int(offset) : int(offset) + count])
        out = part + [values[-1]] * (count - len(part)) if part else [values[-1]] * count
    elif values:
        last = len(values) - 1
        for k, duration in enumerate(durations.tolist()):
            lo = math.floor(offset + k + 1e-9)
            hi = math.ceil(offset + k + duration / width - 1e-9) - 1
            lo = min(max(lo, 0), last)
            hi = min(max(hi, lo), last)
            out[k] = max(values[lo : hi + 1])
    return np.array(out)


@dataclass(frozen=True, slots=True)
class Candidates:
    """Candidates of one model as parallel arrays over n candidates and the demand's buckets:
    live instances first (so that a tie keeps what runs), then offerings in a stable order.

    `ready[i, t]`: candidate i serves bucket t (ready by its start). `ready_rps[i, t]`: what it
    serves there (`ready * capacity_rps`, built with the rows so that models sharing offering
    rows share it too). `cost_usd[i, t]`: what holding i from now to the end of bucket t costs: a
    live instance pays only past its paid time, a new one at least its billing minimum, launch
    overhead included. `pool` numbers spot pools (-1: on-demand)."""

    capacity_rps: np.ndarray
    ready: np.ndarray
    ready_rps: np.ndarray
    cost_usd: np.ndarray
    price_per_hour: np.ndarray
    existing: np.ndarray
    backup: np.ndarray
    pool: np.ndarray
    pools: int


@dataclass(frozen=True, slots=True)
class Cover:
    """The greedy's result for one model: indices into its Candidates."""

    kept: tuple[int, ...]  # live instances the forecast needs
    launches: tuple[tuple[int, float, float], ...]  # (candidate, $/request, needed from, s)
    planned_rps: np.ndarray  # capacity per bucket with kept + launches
    launch_rps: np.ndarray  # per launch, its capacity per bucket (rows align with launches)
    spill_rps: np.ndarray  # demand per bucket planned for the serverless pool instead


def cover_demand(
    demand: Demand,
    cands: Candidates,
    *,
    spot_max_share: float,
    spot_min_pools: int,
    max_instances: int,
    spill_usd_per_request: float | None = None,
    spill_max_rps: float = 0.0,
    spill_before: int = 0,
) -> Cover:
    """Run the greedy for one model; deterministic (ties go to the lowest index).
    `spill_usd_per_request`: the serverless pool's price where its latency fits the SLO (None:
    no pool, or too slow for this model), `spill_max_rps` the rate its concurrency carries,
    `spill_before` the buckets it is weighed for (those before the model's most cost-efficient
    type could be ready)."""
    load = demand.upper_rps
    nb = len(load)
    planned = np.zeros(nb)
    # np.count_nonzero and ufunc methods, not ndarray.any/np.argmin: those add a Python-level
    # wrapper per call, and this loop runs a few times per model for every model each tick.
    spill = np.zeros(nb)
    if len(cands.capacity_rps) == 0 or not np.count_nonzero(load):
        return Cover((), (), planned, np.zeros((0, nb)), spill)
    cap = cands.capacity_rps
    ready = cands.ready
    ready_cap = cands.ready_rps
    cost_usd = cands.cost_usd
    durations = demand.durations_s
    peak_rps = demand.peak_rps
    spot = cands.pool >= 0
    spot_cap = spot_max_share * peak_rps + _EPS_RPS
    pool_cap = spot_cap / spot_min_pools
    # What must survive the loss of any one spot pool (the hedge): the same share of demand the
    # caps guarantee when instances are small next to them.
    keep = 1.0 - spot_max_share / spot_min_pools
    pool_used = np.zeros(cands.pools + 1)  # last slot: on-demand rows index it, never read
    pool_rps = np.zeros((cands.pools + 1, nb))  # spot capacity per pool and bucket
    spot_used = 0.0
    eligible = cap > 0
    ok: np.ndarray | None = eligible.copy()  # None: recompute before the next pick
    ok_hedging = False  # whether `ok` was fitted for the hedge (first instances of pools fit)
    any_backup = bool(np.count_nonzero(cands.backup))
    blocked = [False] * nb
    kept: list[int] = []
    launches: list[tuple[int, float, float]] = []
    rows: list[np.ndarray] = []
    tol = _EPS_RPS * max(1.0, peak_rps)
    while len(kept) + len(launches) < max_instances:
        unserved = load - planned - spill
        open_ = [u > tol and not b for u, b in zip(unserved.tolist(), blocked, strict=True)]
        worst_pool: np.ndarray | None = None
        if True not in open_ and spot_used > 0 and keep > 0:
            # The demand is covered: now the hedge, what the loss of the largest pool leaves,
            # from the first bucket the efficient type can reach (nearer, a pool's loss comes
            # with a two-minute notice and is replaced at once; hedging it with stopgaps would
            # cost many times the risk).
            spot_rows = pool_rps[:-1]
            unserved = keep * load - (planned - spot_rows.max(axis=0))
            unserved[: demand.tail_from] = 0.0
            open_ = [u > tol and not b for u, b in zip(unserved.tolist(), blocked, strict=True)]
            worst_pool = spot_rows.argmax(axis=0)
        if True not in open_:
            break
        tau = open_.index(True)
        e = open_.index(False, tau) if False in open_[tau:] else nb
        served = np.minimum(unserved[tau:e], ready_cap[:, tau:e]) @ durations[tau:e]
        hedging = worst_pool is not None
        if ok is None or ok_hedging != hedging:
            # A spot candidate fits while it keeps the model's spot capacity within spot_cap
            # and its pool's within pool_cap. The first instance of a pool fits while some of
            # spot_cap is left (an instance larger than a pool's share would otherwise rule spot
            # out), and the hedge above then buys what the loss of that pool would leave
            # uncovered, where a first instance in another pool always fits. Once the share
            # is spent, a first instance in yet another pool does not: at scale, one instance
            # in each of a dozen pools of other types would carry spot far past spot_max_share.
            first = (pool_used[cands.pool] == 0) & (hedging or spot_used < spot_cap)
            fits = first | (
                (spot_used + cap <= spot_cap) & (pool_used[cands.pool] + cap <= pool_cap)
            )
            ok = eligible & (~spot | fits)
            ok_hedging = hedging
        usable = ok & (served > 0)
        if worst_pool is not None:
            # Capacity in a pool that is the largest in some bucket of the window is lost with
            # that pool: it cannot hedge against it.
            lost = np.zeros(cands.pools + 1, dtype=bool)
            lost[worst_pool[tau:e]] = True
            usable = usable & ~lost[cands.pool]
        if any_backup:
            primary = usable & ~cands.backup
            if np.count_nonzero(primary):
                usable = primary
        if not np.count_nonzero(usable):
            blocked[tau:e] = [True] * (e - tau)
            continue
        ratio = np.where(usable, cost_usd[:, e - 1] / np.maximum(served, 1e-300), np.inf)
        k = int(ratio.argmin())
        near = min(e, spill_before)
        if (
            spill_usd_per_request is not None
            and worst_pool is None
            and tau < near
            and ratio[k] >= spill_usd_per_request
        ):
            # The pool takes what its concurrency leaves room for; instances only the rest.
            take = np.minimum(unserved[tau:near], np.maximum(spill_max_rps - spill[tau:near], 0.0))
            if float(np.max(take)) > tol:
                spill[tau:near] += take
                continue
        planned = planned + ready_cap[k]
        if cands.existing[k]:
            kept.append(k)
            eligible[k] = False  # a live instance is kept once; offerings can be bought again
            ok[k] = False
        else:
            first_bucket = tau + int(ready[k, tau:e].argmax())
            launches.append((k, float(ratio[k]), float(demand.starts_s[first_bucket])))
            rows.append(ready_cap[k])
        if spot[k]:
            spot_used += cap[k]
            pool_used[cands.pool[k]] += cap[k]
            pool_rps[cands.pool[k]] += ready_cap[k]
            ok = None  # the caps changed; most models stop here, so refit only if they go on
    launch_rps = np.array(rows) if rows else np.zeros((0, nb))
    return Cover(tuple(kept), tuple(launches), planned, launch_rps, spill)
