"""The many-model fleet's choices around `placement.place` (issue 16): the rate each model is
placed at, the instance type the fleet runs on, the offerings its new instances are bought in,
and the re-plan that tries one instance fewer. The control loop
(mark/apps/control/placement_applier.py) and the many-model simulator
(mark/apps/simulator/many_model.py) call these, so the fleet that serves follows the rules the
simulator evaluates.

- `placement_rate`: a model is placed at the upper quantile's largest bucket over the next
  interval, and at zero (placed nowhere: scaled to zero) where the forecast mean expects fewer
  than `min_expected_requests` requests in it; its first request is then a load or a spill.
- `split_cached`: which models hold memory (placed: pinned where the placement puts them) and
  which are left to the instances' caches (loaded on demand, LRU with eviction protection, as
  Cortex serves its 1,000 models from three instances), and what the cached ones take of the
  fleet (`placement.CacheShare`). See its docstring for the rule.
- `replan`: `place` with the move budget, then, where the fleet has room for it, the same with
  the least-occupied running instance left out (its models move to the others, within the
  budget; it retires once they are ready there), kept when that needs no new instance.
- `cheapest_type`: every candidate type's placement of the rates on new instances, the one that
  costs least per hour (types whose lower bound, price x max(occupancy, memory, 1), is above the
  best found are not packed).
- `bin_offerings`: a new instance goes to spot while the fleet's spot share stays within
  `spot_max_share` (the planner's hedge: a pool taken back takes no more than that), in the
  cheapest spot pool the fleet does not use yet where there is one (replicas of a hot model on
  different instances then sit in different pools), else on-demand.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from mark.core.types import Instance, Market, Offering
from provisioner.policy.capacity import CapacityCache
from provisioner.policy.offerings import Offerings
from provisioner.policy.placement import (
    NO_CACHE,
    CacheShare,
    ModelNeed,
    Placement,
    Resident,
    occupancy,
    place,
)

__all__ = [
    "TypeOption",
    "LoadCost",
    "placement_rate",
    "split_cached",
    "replan",
    "cheapest_type",
    "bin_offerings",
]

_EPS = 1e-9


def placement_rate(
    mean_rps: Sequence[float],
    upper_rps: Sequence[float],
    bucket_s: float,
    min_expected_requests: float,
) -> float:
    """The rate to place a model at from its forecast over the next interval (one value per
    bucket of `bucket_s`): its largest upper bucket, or 0 where the mean expects fewer than
    `min_expected_requests` requests in the whole interval."""
    if sum(mean_rps) * bucket_s < min_expected_requests:
        return 0.0
    return max(upper_rps, default=0.0)


@dataclass(frozen=True, slots=True)
class LoadCost:
    """What serving one model by loads takes on the fleet's type: the expected load time (from
    the instance's disk cache where its artifact stays there, else the store), one request's
    service time T(1), and the serverless price per request where the pool's latency fits the
    model's SLO (None: a spilled request misses)."""

    load_s: float
    service_s: float
    spill_usd: float | None = None


def split_cached(
    needs: Sequence[ModelNeed],
    costs: Mapping[str, LoadCost],
    mean_rps: Mapping[str, float],
    *,
    protect_s: float,
    memory_usd_per_mb_s: float,
    allowance_share: float,
    memory_limit_mb: float,
    cache: CapacityCache,
) -> tuple[list[ModelNeed], CacheShare]:
    """(the needs to place, what the rest take as `CacheShare`). A model with traffic holds
    memory on an instance (is placed) only where that is cheaper than serving its requests by
    loads into the instances' caches:

    - at rate r, a cached model stays in memory for each request's load, service and the
      worker's eviction protection (`hold` = load_s + T(1) + `protect_s`), so it holds its
      memory a share min(1, r * hold) of the time (Little's law): at r * hold >= 1 it is resident
      anyway, and placing it costs no more memory and saves its loads: placed;
    - else, where a load and one service fit its SLO latency, its requests wait for the load
      and meet the SLO: cached (it holds less memory than placed, and the same compute);
    - else, where the serverless pool fits its SLO, its requests during a load spill: cached
      where r * (spill price + memory price * hold) is below its memory's price placed
      (`memory_usd_per_mb_s`: the type's price over its model memory);
    - else its requests during a load miss: cached, the least busy first, while memory is what
      sizes the fleet (the memory of the models still placed, over `memory_limit_mb`, above
      the occupancy of every model with traffic: else the memory saved buys nothing) and their
      expected misses, r * (1 + r * load_s) each, stay within `allowance_share` of the SLO's
      miss allowance (sum of r * (1 - percentile) over every model with traffic); the rest
      placed.

    The cached models' share of the fleet: their occupancy (mostly unbatched:
    `placement.occupancy`) and memory (min(1, r * hold) * memory_mb each), each a sum over
    many models whose upper quantiles do not add up: the means add (`mean_rps`, the mean
    forecast rates), and each model's excess at its placement rate (the upper quantile) over
    its mean adds in quadrature, as deviations of independent parts do; and room for the
    largest."""
    live = [n for n in needs if n.rate_rps > 0]
    placed: list[ModelNeed] = []
    cached: list[ModelNeed] = []
    by_misses: list[tuple[float, str, ModelNeed]] = []
    for need in live:
        cost = costs[need.name]
        hold_s = cost.load_s + cost.service_s + protect_s
        if need.rate_rps * hold_s >= 1.0:
            placed.append(need)
        elif cost.load_s + cost.service_s <= need.slo.latency_ms / 1000.0 + _EPS:
            cached.append(need)
        elif (
            cost.spill_usd is not None
            and need.rate_rps * (cost.spill_usd + need.memory_mb * hold_s * memory_usd_per_mb_s)
            < need.memory_mb * memory_usd_per_mb_s
        ):
            cached.append(need)
        else:
            by_misses.append((need.rate_rps, need.name, need))
    allowance = allowance_share * sum(n.rate_rps * (1.0 - n.slo.percentile) for n in live)
    spent = 0.0
    # misses buy memory, worth it only while memory sizes the fleet: the memory of what stays
    # placed needs more instances than the compute of every model with traffic
    compute = sum(min(occupancy(n, n.rate_rps, cache), 1e6) for n in live)
    placed_mb = sum(n.memory_mb for n in live) - sum(n.memory_mb for n in cached)
    for rate, _, need in sorted(by_misses, key=lambda x: (x[0], x[1])):
        misses = rate * (1.0 + rate * costs[need.name].load_s)
        binds = placed_mb > compute * memory_limit_mb + _EPS
        if binds and spent + misses <= allowance + _EPS:
            spent += misses
            placed_mb -= need.memory_mb
            cached.append(need)
        else:
            placed.append(need)
    mean = {n.name: min(mean_rps.get(n.name, n.rate_rps), n.rate_rps) for n in cached}

    def held_mb(n: ModelNeed, rate_rps: float) -> float:
        cost = costs[n.name]
        return n.memory_mb * min(1.0, rate_rps * (cost.load_s + cost.service_s + protect_s))

    def upper_sum(part: Callable[[ModelNeed, float], float]) -> float:
        low = [part(n, mean[n.name]) for n in cached]
        high = [part(n, n.rate_rps) for n in cached]
        excess = math.sqrt(sum((h - lo) ** 2 for h, lo in zip(high, low, strict=True)))
        return sum(low) + excess

    share = CacheShare(
        occupancy=upper_sum(lambda n, r: occupancy(n, r, cache)),
        memory_mb=upper_sum(held_mb),
        slot_mb=max((n.memory_mb for n in cached), default=0.0),
    )
    return sorted(placed, key=lambda n: n.name), share


def replan(
    needs: Sequence[ModelNeed],
    residents: Sequence[Resident],
    *,
    memory_limit_mb: float,
    max_moves: int,
    cache: CapacityCache,
    replicate_above: float = 0.5,
    cached: CacheShare = NO_CACHE,
) -> Placement:
    """`place`, then one instance fewer where the fleet's occupancy and memory leave room for
    it and the smaller placement needs no new instance and leaves no more models unplaced."""

    def packed(kept: Sequence[Resident]) -> Placement:
        return place(
            needs,
            kept,
            memory_limit_mb=memory_limit_mb,
            max_moves=max_moves,
            cache=cache,
            replicate_above=replicate_above,
            cached=cached,
        )

    plan = packed(residents)
    busy = [b for b in plan.bins if b.instance_id is not None and b.kept]
    placed_mb = sum(r.memory_mb for b in plan.bins for r in b.replicas) + cached.memory_mb
    if len(busy) >= 2 and plan.new_instances == 0:
        occupied = sum(b.occupancy for b in plan.bins)
        fewer = len(plan.bins) - 1
        if occupied <= fewer - 0.5 and placed_mb <= fewer * memory_limit_mb:
            victim = min(busy, key=lambda b: (b.occupancy, b.instance_id or ""))
            smaller = packed([r for r in residents if r.instance_id != victim.instance_id])
            if smaller.new_instances == 0 and set(smaller.unplaced) <= set(plan.unplaced):
                plan = smaller  # the victim is in no bin: it retires once its models moved
    return plan


@dataclass(frozen=True, slots=True)
class TypeOption:
    """One instance type the fleet could run on: its price per hour, the memory models may fill
    on one instance, and every model of the fleet as it would run there (rates to place)."""

    name: str
    price_per_hour: float | None  # None: not on offer now
    memory_limit_mb: float
    needs: tuple[ModelNeed, ...]
    cached: CacheShare = NO_CACHE  # the models left to the cache there (`split_cached`)


def cheapest_type(
    options: Sequence[TypeOption], cache: CapacityCache, replicate_above: float = 0.5
) -> tuple[str | None, list[str]]:
    """The option whose placement of its needs on new instances costs least per hour, and why
    each other one was not taken; (None, reasons) when none can hold the fleet. A type on which
    some model cannot meet its SLO at any rate is not a candidate."""
    reasons: list[str] = []
    bounded: list[tuple[float, str, TypeOption]] = []
    for option in options:
        if option.price_per_hour is None:
            reasons.append(f"{option.name}: no price")
            continue
        if any(cache.get(n.profile, n.slo, n.max_batch).rate_rps <= 0 for n in option.needs):
            reasons.append(f"{option.name}: misses the SLO")
            continue
        live = [n for n in option.needs if n.rate_rps > 0]
        load = sum(occupancy(n, n.rate_rps, cache) for n in live) + option.cached.occupancy
        memory = (sum(n.memory_mb for n in live) + option.cached.memory_mb) / option.memory_limit_mb
        bounded.append((option.price_per_hour * max(load, memory, 1.0), option.name, option))
    best: tuple[float, str] | None = None
    for bound, name, option in sorted(bounded, key=lambda b: (b[0], b[1])):
        if best is not None and bound >= best[0]:
            break
        assert option.price_per_hour is not None
        plan = place(
            option.needs,
            [],
            memory_limit_mb=option.memory_limit_mb,
            max_moves=0,
            cache=cache,
            replicate_above=replicate_above,
            cached=option.cached,
        )
        if plan.unplaced:
            reasons.append(f"{name}: {next(iter(plan.unplaced.values()))}")
            continue
        cost = plan.new_instances * option.price_per_hour
        if best is None or cost < best[0] - _EPS:
            best = (cost, name)
    return (best[1] if best is not None else None), reasons


def bin_offerings(
    count: int,
    instance_type: str,
    offerings: Offerings,
    fleet: Sequence[Instance],
    *,
    spot: bool,
    spot_max_share: float,
) -> list[Offering]:
    """Offerings for `count` new instances of `instance_type` beside the live `fleet` (see the
    module docstring); fewer when nothing of the type is available."""
    out: list[Offering] = []
    used = {i.offering.key for i in fleet}
    on_spot = sum(1 for i in fleet if i.offering.market == Market.SPOT)
    total = len(fleet) + count
    spot_left = math.floor(spot_max_share * total + _EPS) - on_spot if spot else 0
    for _ in range(count):
        chosen = None
        if spot_left > 0:
            chosen = offerings.cheapest(instance_type, Market.SPOT, prefer_not=used)
        if chosen is None:
            chosen = offerings.cheapest(instance_type, Market.ON_DEMAND)
        if chosen is None:
            break
        if chosen.market == Market.SPOT:
            spot_left -= 1
        used.add(chosen.key)
        out.append(chosen)
    return out
