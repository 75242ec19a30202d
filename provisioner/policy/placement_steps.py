"""From a many-model placement to the moves that carry it out on a running fleet, in an order
that never leaves a model with traffic unserved (issue 16 item 2: load before route, unload
after drain), and the routing rule the front ends apply to it.

The fleet as the control loop sees it (`PlacedFleet`): per instance (`Member`) what the
placement put there (`placed`, persisted as `Instance.placed_models`, which the front ends read),
what its repository index says it holds (`held`), the loads in flight, and the models being
drained off it since when (`draining`, persisted as `Instance.draining_models`). `steps` says
what to do now; the caller carries it out and calls again (every sync) until nothing is left:

1. Drains already marked: cleared once the model left the instance (the unload took effect);
   cancelled when the model is wanted there again (placed there, or its traffic came back and
   that copy is the only one the front ends could route to); unloaded once marked for
   `drain_s` (the front ends stopped routing it there and the requests they had queued there
   were answered).
2. Instances with nothing placed (emptied into the others, or with an interruption notice) are
   retired once every model with traffic they hold is held by another instance that serves it;
   a booting one at once; except the `kept` first of them (running ones first, by id), the
   instances the placement keeps to serve the cached models' loads alone
   (`placement.Bin.reserve`).
3. New drains, which the front ends see on their next sync: first the models the placement
   unloads to make room (`for_room`), only while another instance serves them; then the models
   with no traffic, everywhere they are held (scale to zero: its first request is a load or a
   spill).
4. Loads of placed models not held yet, the hottest first, each where the instance's memory
   (what it holds, less this step's unloads, plus its loads in flight) leaves room; a load
   waiting for room waits for the drain that frees it. The front ends route a model to an
   instance only once it is there (its index says READY), so a completed load makes it
   routable: load before route.

A model that moves (placed on B, held on A) is therefore loaded on B first and drained from A
only once B serves it: never unloaded from its last serving instance while it has traffic.
Moves (loads and drains; an unload is the end of a drain, not another move) are at most
`budget` per step; loads onto an instance that holds nothing yet (a new instance taking its
placement) are not moves, as in `placement.place`. A load that waits for room or budget stays
pending; the next tick's placement starts again from what is held.

`load_target` is where a model resident nowhere is loaded for its requests: where the placement
put it first, then where it fits without evicting (a full worker evicts, or refuses for models
in rotation); among those, the least busy of the instances whose load ends in time for the
request's deadline (so that the cached tail's compute spreads over the fleet, as the placement
reserved it on every instance), else the one whose load ends soonest. The many-model simulator
chooses by it.

`route_targets` is the data plane's side: a model's requests go to the instances that hold it
where the placement put it, and only when none of those holds it yet to every instance that
holds it (while a moved model loads on its new instance, the old one serves it); the many-model
simulator routes by the same rule (`placed & available`, else every holder).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["Member", "PlacedFleet", "Steps", "LoadOption", "steps", "load_target", "route_targets"]

Move = tuple[str, str]  # (instance id, model)
_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class Member:
    """One instance of the fleet: RUNNING (`running`) or booting; the models placed on it, held
    in memory (READY in its index), being loaded by the control loop, and draining since."""

    instance_id: str
    running: bool
    placed: frozenset[str]
    held: frozenset[str]
    loading: frozenset[str] = frozenset()
    draining: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PlacedFleet:
    """The fleet and the last placement: each model's placement rate (0: scaled to zero; a
    model held but not listed counts as 0), memory footprints, the memory models may fill on one
    instance, and the (instance, model) unloads the placement made room with."""

    members: tuple[Member, ...]
    rates: Mapping[str, float]
    memory_mb: Mapping[str, float]
    memory_limit_mb: float
    for_room: frozenset[Move] = frozenset()
    kept: int = 0  # instances with nothing placed that serve the cache (module docstring, 2)


@dataclass(frozen=True, slots=True)
class Steps:
    """What to do now, in this order: `unloads` (drained long enough), `loads`, `drains` to
    start (the front ends stop routing the model there), drain marks to remove (`cleared`) and
    instances to take out of service (`retire`: drain, then terminate). `moves` is what counted
    against the budget."""

    unloads: tuple[Move, ...] = ()
    loads: tuple[Move, ...] = ()
    drains: tuple[Move, ...] = ()
    cleared: tuple[Move, ...] = ()
    retire: tuple[str, ...] = ()
    moves: int = 0

    def __bool__(self) -> bool:
        return bool(self.unloads or self.loads or self.drains or self.cleared or self.retire)


@dataclass(frozen=True, slots=True)
class LoadOption:
    """An instance that could load a model resident nowhere: whether the placement put the
    model there, whether it has room for it without evicting, when its load would end (after
    the loads ahead of it), whether that leaves the request's service within its deadline, and
    how busy the instance is now (any measure that grows with its load, the same for every
    option)."""

    instance_id: str
    placed: bool
    ready_s: float
    fits: bool
    busy: float
    room: bool = True  # it holds the model without evicting (unknown: True)


def load_target(options: Iterable[LoadOption]) -> LoadOption | None:
    """The option to load on (see the module docstring); None when there is none. Ties go to
    the first listed."""
    listed = list(options)
    if not listed:
        return None
    placed = [o for o in listed if o.placed] or listed
    placed = [o for o in placed if o.room] or placed
    fitting = [o for o in placed if o.fits]
    if fitting:
        return min(fitting, key=lambda o: (o.busy, o.ready_s))
    return min(placed, key=lambda o: o.ready_s)


def route_targets(placed_here: Mapping[str, bool]) -> frozenset[str]:
    """Where a model's requests go among the instances that hold it (id -> whether the
    placement put it there): the placed ones, else all."""
    placed = frozenset(i for i, here in placed_here.items() if here)
    return placed or frozenset(placed_here)


def steps(fleet: PlacedFleet, *, now_s: float, drain_s: float, budget: int) -> Steps:
    """The next moves towards the placement (see the module docstring); pure and
    deterministic."""
    members = sorted(fleet.members, key=lambda m: m.instance_id)

    def rate(model: str) -> float:
        return fleet.rates.get(model, 0.0)

    def mb(model: str) -> float:
        return fleet.memory_mb.get(model, 0.0)

    # The instances the front ends may route each model to, as this step leaves them.
    holders: dict[str, set[str]] = {}
    for m in members:
        if m.running:
            for model in m.held - m.draining.keys():
                holders.setdefault(model, set()).add(m.instance_id)

    def served_elsewhere(model: str, instance_id: str) -> bool:
        """Taking `model` off `instance_id` leaves its traffic served (or it has none)."""
        return rate(model) <= 0 or bool(holders.get(model, set()) - {instance_id})

    unloads: list[Move] = []
    cleared: list[Move] = []
    freed: dict[str, float] = {}
    marked: dict[str, set[str]] = {}  # still draining after this step's first part
    for m in members:
        for model, since_s in sorted(m.draining.items()):
            key = (m.instance_id, model)
            if model not in m.held and model not in m.loading:
                cleared.append(key)  # gone: the unload took effect (or it left by itself)
                continue
            wanted_off = model not in m.placed and (
                rate(model) <= 0 or (key in fleet.for_room and served_elsewhere(model, key[0]))
            )
            if not wanted_off:
                cleared.append(key)
                if m.running and model in m.held:
                    holders.setdefault(model, set()).add(m.instance_id)
                continue
            marked.setdefault(m.instance_id, set()).add(model)
            if now_s - since_s >= drain_s - _EPS and model in m.held:
                unloads.append(key)
                freed[m.instance_id] = freed.get(m.instance_id, 0.0) + mb(model)

    retire: list[str] = []
    empty = sorted((m for m in members if not m.placed), key=lambda m: (not m.running,
                   m.instance_id))  # fmt: skip
    for m in empty[fleet.kept :]:
        serving = m.held - marked.get(m.instance_id, set())
        if not m.running or all(served_elsewhere(model, m.instance_id) for model in serving):
            retire.append(m.instance_id)
            for model in serving:
                holders.get(model, set()).discard(m.instance_id)
    leaving = set(retire)

    budget = max(budget, 0)
    moves = 0
    drains: list[Move] = []

    def drain(candidates: Iterable[Move], *, needs_cover: bool) -> None:
        nonlocal moves
        for instance_id, model in candidates:
            if moves >= budget:
                return
            if needs_cover and not served_elsewhere(model, instance_id):
                continue
            drains.append((instance_id, model))
            holders.get(model, set()).discard(instance_id)
            moves += 1

    def drainable(m: Member, model: str) -> bool:
        return (
            m.running
            and m.instance_id not in leaving
            and model in m.held
            and model not in m.draining
            and model not in m.placed
        )

    by_id = {m.instance_id: m for m in members}
    room = sorted(
        key for key in fleet.for_room if key[0] in by_id and drainable(by_id[key[0]], key[1])
    )
    drain(room, needs_cover=True)

    used = {
        m.instance_id: sum(mb(x) for x in m.held | m.loading) - freed.get(m.instance_id, 0.0)
        for m in members
    }
    wanted = sorted(
        (
            (-rate(model), m.instance_id, model)
            for m in members
            if m.running and m.instance_id not in leaving
            for model in m.placed - m.held - m.loading
        ),
    )
    loads: list[Move] = []
    for _, instance_id, model in wanted:
        m = by_id[instance_id]
        filling = not m.held and not m.loading  # a new instance taking its placement
        if used[instance_id] + mb(model) > fleet.memory_limit_mb + _EPS:
            continue
        if not filling:
            if moves >= budget:
                continue
            moves += 1
        loads.append((instance_id, model))
        used[instance_id] += mb(model)

    idle = sorted(
        (m.instance_id, model)
        for m in members
        for model in m.held
        if rate(model) <= 0 and drainable(m, model) and (m.instance_id, model) not in drains
    )
    drain(idle, needs_cover=False)
    return Steps(tuple(unloads), tuple(loads), tuple(drains), tuple(cleared), tuple(retire), moves)
