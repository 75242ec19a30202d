"""Many-model placement: which models each instance of one type holds, so that memory and the
SLO hold, recomputed every tick with few moves (issue 16; Cortex and AWS pack hundreds of models
per instance, placed offline and never changed).

Compute demand is squishy (Nexus, Shen et al., SOSP 2019): a model's load on an instance is not
linear in its rate, because a model with few requests forms small batches and a small batch
costs more server time per request. Co-resident models take turns on the servers in a duty
cycle d (Nexus's rule, simplified: d is half the model's SLO budget, so a request waits at most
a cycle and then its batch's service): each cycle a model at rate r serves a batch of
b = clamp(r * d, 1, B) (B the largest batch it forms at its capacity; below one request a cycle
it appears in a share r * d of the cycles), and so keeps the servers busy for
r * T(b) / (b * parallelism) of each second. `occupancy` divides that by the same share at the
model's capacity at the SLO (`provisioner.policy.capacity`), so one model at its capacity
occupies exactly 1, and models sharing an instance fit while their occupancies sum to at most
1. It is continuous and increasing in the rate. The approximation, stated here: the cycle is
each model's own, not a common one, and the many-model simulator (mark/apps/simulator/
many_model.py) applies the same occupancy, so it does not check it; its cross-check against the
per-request engine is on one model per instance.

A model whose rate needs more than one instance, or more than `replicate_above` of one, gets
replicas on distinct instances, its rate split evenly (each replica's occupancy computed at its
share, squishily). Models without traffic are not placed: they scale to zero, and their first
request is a load or a spill.

The packing (`place`), deterministic:
1. Keep: every replica first tries an instance that already holds the model (largest occupancy
   first), so a steady fleet places every model where it is and makes no move.
2. Decreasing by the dominant share (occupancy, or memory over the limit), each replica goes
   to the new instance whose room it matches best (`_Packer.best_fit`), else onto a running
   instance while the move budget lasts (each load onto a running instance is a move), else
   onto a new instance; replicas of one model never share an instance.
3. Improvement: the least-filled new instance is emptied into the others where everything
   fits, repeatedly, so a first fit that opened one instance too many closes it.
Residents no longer needed stay loaded (an unload is a move, and an idle model costs memory,
not compute) unless their memory is needed for a placement, which then unloads the least
busy; `Placement.unload` lists them.

The models left to the cache (`CacheShare`, chosen by `placement_fleet.split_cached`: served by
loads, pinned nowhere) still take compute and, while loaded, memory: their total is spread evenly
over the instances as a reserve each bin starts with (`Bin.reserve`), at least one cached
model's memory per instance (a load never has to evict a placed model). The count it is spread
over is the smallest whose packing needs no more instances than that count (bisection up from a
lower bound on the instances, compute and memory of everything); instances that hold only the
reserve are opened when the cached models need more than the placed ones leave.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from mark.core.types import Profile, Slo
from provisioner.policy.batching import slo_budget_ms
from provisioner.policy.capacity import CapacityCache

__all__ = [
    "ModelNeed",
    "CacheShare",
    "NO_CACHE",
    "Resident",
    "Replica",
    "Bin",
    "Placement",
    "occupancy",
    "replica_rates",
    "place",
]

_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class ModelNeed:
    """One model as the placement sees it on the type being packed: its forecast rate, its
    memory footprint there and its profile and SLO (for the squishy occupancy)."""

    name: str
    rate_rps: float
    memory_mb: float
    profile: Profile
    slo: Slo
    max_batch: int


@dataclass(frozen=True, slots=True)
class CacheShare:
    """What the models served by loads take of the fleet: their occupancy summed, the memory
    they hold at once (expected), and the largest of them (room for one load per instance)."""

    occupancy: float = 0.0
    memory_mb: float = 0.0
    slot_mb: float = 0.0

    def __bool__(self) -> bool:
        return self.occupancy > 0 or self.memory_mb > 0 or self.slot_mb > 0


NO_CACHE = CacheShare()  # every model with traffic placed


@dataclass(frozen=True, slots=True)
class Resident:
    """A running instance and the models it holds now."""

    instance_id: str
    models: frozenset[str]


@dataclass(frozen=True, slots=True)
class Replica:
    """One replica of a model: the rate routed to it and what it takes of an instance."""

    model: str
    rate_rps: float
    occupancy: float
    memory_mb: float


@dataclass
class Bin:
    """One instance in the result: a running one (`instance_id`) or one to launch (None), the
    replicas it holds, and its memory (placed replicas, plus on a running instance the idle
    models it still holds) and occupancy in use."""

    instance_id: str | None
    replicas: list[Replica] = field(default_factory=list)
    memory_mb: float = 0.0
    occupancy: float = 0.0
    placed: set[str] = field(default_factory=set)
    reserve: bool = False  # it serves the cached models' loads (part of its room is theirs)

    @property
    def kept(self) -> bool:
        """The instance is in use: it holds replicas or serves the cache."""
        return bool(self.replicas) or self.reserve

    @property
    def rates(self) -> dict[str, float]:
        """Rate routed to each model it holds a replica of."""
        return {r.model: r.rate_rps for r in self.replicas}

    def holds(self, model: str) -> bool:
        return model in self.placed

    def add(self, item: Replica, memory_mb: float) -> None:
        self.replicas.append(item)
        self.placed.add(item.model)
        self.memory_mb += memory_mb
        self.occupancy += item.occupancy


@dataclass(frozen=True)
class Placement:
    """The packing: `bins` (running instances first, in the order given, then new ones),
    `loads` and `unload` as (instance id, model) moves on running instances, models that fit
    nowhere (`unplaced`, with why), and the replicas per model."""

    bins: tuple[Bin, ...]
    loads: tuple[tuple[str, str], ...]
    unload: tuple[tuple[str, str], ...]
    unplaced: Mapping[str, str]
    replicas: Mapping[str, int]

    @property
    def moves(self) -> int:
        return len(self.loads) + len(self.unload)

    @property
    def new_instances(self) -> int:
        return sum(1 for b in self.bins if b.instance_id is None)


def occupancy(need: ModelNeed, rate_rps: float, cache: CapacityCache) -> float:
    """The share of one instance the model takes at `rate_rps` (1: its capacity at the SLO
    alone; inf: the type cannot meet its SLO)."""
    if rate_rps <= 0:
        return 0.0
    cap = cache.get(need.profile, need.slo, need.max_batch)
    if cap.rate_rps <= 0:
        return math.inf
    cycle_s = slo_budget_ms(need.slo.latency_ms, cache.budget_fraction) / 2000.0
    largest = max(cap.batch_size, 1)

    def busy(rate: float) -> float:
        batch = min(max(rate * cycle_s, 1.0), largest)
        return rate * (need.profile.a_ms / batch + need.profile.c_ms)

    return busy(rate_rps) / max(busy(cap.rate_rps), _EPS)


def replica_rates(
    need: ModelNeed, cache: CapacityCache, replicate_above: float
) -> tuple[float, list[float]]:
    """(occupancy of one replica, the rate of each replica): the fewest replicas whose share
    each fits one instance, at least two when one would take more than `replicate_above`."""
    if need.rate_rps <= 0:
        return 0.0, []
    cap = cache.get(need.profile, need.slo, need.max_batch).rate_rps
    if cap <= 0:
        return math.inf, []
    count = max(1, math.ceil(need.rate_rps / cap - _EPS))
    while True:
        share = need.rate_rps / count
        occ = occupancy(need, share, cache)
        if occ <= 1.0 + _EPS and (count > 1 or occ <= replicate_above + _EPS):
            return occ, [share] * count
        count += 1


class _Packer:
    """The state of one `place` call: bins, what each running instance holds, the moves."""

    def __init__(
        self,
        needs: Mapping[str, ModelNeed],
        residents: Sequence[Resident],
        memory_limit_mb: float,
        max_moves: int,
        reserve: tuple[float, float] = (0.0, 0.0),
    ) -> None:
        self.needs = needs
        self.limit = memory_limit_mb + _EPS
        self.max_moves = max_moves
        self.reserve_occ, self.reserve_mb = reserve
        self.held = {r.instance_id: set(r.models) for r in residents}
        self.bins = [
            self._bin(r.instance_id, sum(self._mb(m) for m in r.models)) for r in residents
        ]
        self.loads: list[tuple[str, str]] = []
        self.unload: list[tuple[str, str]] = []

    @property
    def moves(self) -> int:
        return len(self.loads) + len(self.unload)

    def _bin(self, instance_id: str | None, held_mb: float = 0.0) -> Bin:
        """A bin with the cache's reserve taken: its occupancy, and its memory beyond what a
        running instance holds already (the cached models it holds are part of the reserve)."""
        reserved = self.reserve_occ > 0 or self.reserve_mb > 0
        return Bin(
            instance_id,
            memory_mb=held_mb + self.reserve_mb,
            occupancy=self.reserve_occ,
            reserve=reserved,
        )

    def _mb(self, model: str) -> float:
        need = self.needs.get(model)
        return need.memory_mb if need is not None else 0.0

    def _new_mb(self, b: Bin, item: Replica) -> float:
        """Memory `item` adds to `b`: none where a running instance holds its model already."""
        if b.instance_id is not None and item.model in self.held[b.instance_id]:
            return 0.0
        return item.memory_mb

    def fits(self, b: Bin, item: Replica) -> bool:
        """`item` fits `b`: no replica of its model there, occupancy and memory within it."""
        return (
            item.model not in b.placed
            and b.occupancy + item.occupancy <= 1.0 + _EPS
            and b.memory_mb + self._new_mb(b, item) <= self.limit
        )

    def make_room(self, b: Bin, item: Replica) -> bool:
        """Unload idle models of a running instance, least busy first, until `item` fits,
        within the move budget (one move is kept for the load itself)."""
        assert b.instance_id is not None
        if item.model in b.placed or b.occupancy + item.occupancy > 1.0 + _EPS:
            return False
        held = self.held[b.instance_id]
        idle = sorted(
            (m for m in held - b.placed - {item.model} if self._mb(m) > 0),
            key=lambda m: (self.needs[m].rate_rps if m in self.needs else 0.0, m),
        )
        while not self.fits(b, item):
            if not idle or self.moves + 1 >= self.max_moves:
                return False
            gone = idle.pop(0)
            held.discard(gone)
            b.memory_mb -= self._mb(gone)
            self.unload.append((b.instance_id, gone))
        return True

    def keep(self, item: Replica) -> bool:
        """Place `item` on a running instance that holds its model already."""
        for b in self.bins:
            if b.instance_id is not None and item.model in self.held[b.instance_id]:
                if self.fits(b, item):
                    b.add(item, 0.0)
                    return True
        return False

    def best_fit(self, item: Replica, max_new: int) -> bool:
        """Place `item` where it fits best: among the new instances it fits, the one whose
        room it matches most (the dot product of its occupancy and memory with what the
        instance has left, so compute-heavy models join memory-full instances and the cold tail
        joins compute-full ones: Panigrahy et al., "Heuristics for vector bin packing", 2011);
        else a running instance while the move budget lasts (a load, unloading idle models for
        room); else a new instance."""
        best: Bin | None = None
        score = -1.0
        for b in self.bins:
            if b.instance_id is None and self.fits(b, item):
                fit = item.occupancy * (1.0 - b.occupancy) + (item.memory_mb / self.limit) * (
                    1.0 - b.memory_mb / self.limit
                )
                if fit > score:
                    best, score = b, fit
        if best is not None:
            best.add(item, item.memory_mb)
            return True
        for b in self.bins:
            if (
                b.instance_id is not None
                and self.moves < self.max_moves
                and self.make_room(b, item)
            ):
                b.add(item, self._new_mb(b, item))
                if item.model not in self.held[b.instance_id]:
                    self.held[b.instance_id].add(item.model)
                    self.loads.append((b.instance_id, item.model))
                return True
        if sum(1 for b in self.bins if b.instance_id is None) >= max_new:
            return False
        fresh = self._bin(None)
        fresh.add(item, item.memory_mb)
        self.bins.append(fresh)
        return True

    def close_new(self) -> None:
        """Empty the least-filled new instance into the other new ones while everything of it
        fits there (largest first); stop at the first that does not."""
        while True:
            new = [b for b in self.bins if b.instance_id is None]
            if len(new) < 2:
                return
            victim = min(new, key=lambda b: (b.occupancy, b.memory_mb, len(b.replicas)))
            if victim.reserve:
                return  # the count the reserve was spread over: `place` decides it
            others = [_copy(b) for b in new if b is not victim]
            for item in sorted(victim.replicas, key=_dominant(self.limit)):
                target = next((b for b in others if self.fits(b, item)), None)
                if target is None:
                    return
                target.add(item, item.memory_mb)
            kept = [b for b in self.bins if b.instance_id is not None]
            self.bins = kept + others


def _copy(b: Bin) -> Bin:
    return Bin(b.instance_id, list(b.replicas), b.memory_mb, b.occupancy, set(b.placed), b.reserve)


def _dominant(limit_mb: float) -> Callable[[Replica], tuple[float, str]]:
    """Sort key: largest dominant share (occupancy, or memory over the limit) first."""

    def key(item: Replica) -> tuple[float, str]:
        return (-max(item.occupancy, item.memory_mb / limit_mb), item.model)

    return key


def place(
    needs: Sequence[ModelNeed],
    residents: Sequence[Resident],
    *,
    memory_limit_mb: float,
    max_moves: int,
    cache: CapacityCache,
    replicate_above: float = 0.5,
    max_new: int = 10_000,
    cached: CacheShare = NO_CACHE,
) -> Placement:
    """Pack `needs` onto the running instances in `residents` and new instances of the same
    type (`memory_limit_mb` each for models), making at most `max_moves` loads and unloads on
    running instances, with `cached`'s reserve on every instance; pure and deterministic (see
    the module docstring)."""
    if not cached:
        return _pack(needs, residents, memory_limit_mb, max_moves, cache, replicate_above,
                     max_new, 0)  # fmt: skip

    def packed(count: int) -> Placement:
        return _pack(needs, residents, memory_limit_mb, max_moves, cache, replicate_above,
                     max_new, count, cached)  # fmt: skip

    # the fewest instances that could hold the placed models and the reserve, then the
    # smallest count whose packing needs no more bins than it (more bins: a smaller reserve)
    live = [n for n in needs if 0 < n.rate_rps and n.memory_mb <= memory_limit_mb]
    occupied = sum(min(occupancy(n, n.rate_rps, cache), 1e6) for n in live)
    memory = sum(n.memory_mb for n in live) + cached.memory_mb
    low = max(
        len(residents),
        math.ceil(occupied + cached.occupancy - _EPS),
        math.ceil(memory / memory_limit_mb - _EPS),
        math.ceil(cached.occupancy / replicate_above - _EPS),
        math.ceil(cached.memory_mb / max(memory_limit_mb - cached.slot_mb, _EPS) - _EPS),
        1,
    )
    plan = packed(low)
    if len(plan.bins) <= low:
        return plan
    high, best = len(plan.bins), None
    fallback = plan
    for _ in range(_REPACKS):
        fallback = packed(high)
        if len(fallback.bins) <= high:
            best = fallback
            break
        high = len(fallback.bins)
    if best is None:
        return fallback
    while high - low > 1:
        mid = (low + high) // 2
        trial = packed(mid)
        if len(trial.bins) <= mid:
            high, best = mid, trial
        else:
            low = mid
    return best


_REPACKS = 8  # re-packings with a larger count while each opens more bins than the last


def _pack(
    needs: Sequence[ModelNeed],
    residents: Sequence[Resident],
    memory_limit_mb: float,
    max_moves: int,
    cache: CapacityCache,
    replicate_above: float,
    max_new: int,
    count: int,
    cached: CacheShare = NO_CACHE,
) -> Placement:
    """One packing with `cached` spread over `count` instances (at least that many bins)."""
    reserve = (
        (cached.occupancy / count, max(cached.slot_mb, cached.memory_mb / count))
        if count > 0
        else (0.0, 0.0)
    )
    by_name = {n.name: n for n in needs}
    packer = _Packer(by_name, residents, memory_limit_mb, max_moves, reserve)
    unplaced: dict[str, str] = {}
    items: list[Replica] = []
    replicas: dict[str, int] = {}
    room_mb = memory_limit_mb - reserve[1]
    for need in sorted(needs, key=lambda n: n.name):
        if need.rate_rps <= 0:
            continue
        if need.memory_mb > room_mb:
            unplaced[need.name] = (
                f"{need.memory_mb:.0f} MB is more than an instance holds ({room_mb:.0f} MB"
                + (" beside the cache's room)" if reserve[1] > 0 else ")")
            )
            continue
        occ, rates = replica_rates(need, cache, replicate_above)
        if not rates:
            unplaced[need.name] = "the instance type cannot meet its SLO"
            continue
        replicas[need.name] = len(rates)
        items += [Replica(need.name, r, occ, need.memory_mb) for r in rates]
    items.sort(key=_dominant(memory_limit_mb))
    left = [item for item in items if not packer.keep(item)]
    for item in left:
        if not packer.best_fit(item, max_new):
            unplaced[item.model] = f"more than {max_new} new instances needed"
    packer.close_new()
    while cached and len(packer.bins) < count:
        packer.bins.append(packer._bin(None))  # instances for the cache alone
    return Placement(
        tuple(packer.bins), tuple(packer.loads), tuple(packer.unload), unplaced, replicas
    )
