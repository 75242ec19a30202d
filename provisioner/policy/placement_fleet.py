"""The many-model fleet's choices around `placement.place` (issue 16): the rate each model is
placed at, the instance type the fleet runs on, the offerings its new instances are bought in,
and the re-plan that tries one instance fewer. The control loop
(mark/apps/control/placement_applier.py) and the many-model simulator
(mark/apps/simulator/many_model.py) call these, so the fleet that serves follows the rules the
simulator evaluates.

- `placement_rate`: a model is placed at the upper quantile's largest bucket over the next
  interval, and at zero (placed nowhere: scaled to zero) where the forecast mean expects fewer
  than `min_expected_requests` requests in it; its first request is then a load or a spill.
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
from collections.abc import Sequence
from dataclasses import dataclass

from mark.core.types import Instance, Market, Offering
from provisioner.policy.capacity import CapacityCache
from provisioner.policy.offerings import Offerings
from provisioner.policy.placement import ModelNeed, Placement, Resident, occupancy, place

__all__ = [
    "TypeOption",
    "placement_rate",
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


def replan(
    needs: Sequence[ModelNeed],
    residents: Sequence[Resident],
    *,
    memory_limit_mb: float,
    max_moves: int,
    cache: CapacityCache,
    replicate_above: float = 0.5,
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
        )

    plan = packed(residents)
    busy = [b for b in plan.bins if b.instance_id is not None and b.replicas]
    placed_mb = sum(r.memory_mb for b in plan.bins for r in b.replicas)
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
        load = sum(occupancy(n, n.rate_rps, cache) for n in live)
        memory = sum(n.memory_mb for n in live) / option.memory_limit_mb
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
