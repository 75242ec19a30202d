"""Many-model placement in the live control loop (issue 16 item 2; issue 19 item 4, scale to
zero): which instances hold which models, changed each tick with few moves, carried out through
the workers' KServe v2 repository API (mark/adapters/repository.py) so that no request of a
model that has traffic finds it nowhere.

Which models share instances (`shares_instances`): with `worker.store` set (the workers load
any model from it on demand), those that declare `memory_mb`. They leave the per-model planner
(which keeps every other model and instance as before) and run on instances of one type, each
serving them all (`Instance.models`), holding those placed there. On the local cloud only for
now: EC2's user data starts every model an instance is launched with as a pinned `--model`
(provisioner/adapters/ec2/launch.py), which a many-model instance must not.

Each tick (`tick`, after the planner's actions):
1. each model's rate to place: `placement_fleet.placement_rate` of its forecast over the
   horizon, zero below `placement.min_expected_requests` requests (scaled to zero); of those
   with traffic, `placement_fleet.split_cached` keeps placed only the ones whose memory is
   cheaper than their loads (each load expected to take `batching.default_load_s`, with
   `worker.protect_s` of eviction protection; no spill priced here, so a model whose load does
   not fit its deadline is placed unless the miss allowance takes it,
   `placement.miss_allowance_share`), and the others are served from the workers' caches by
   the front ends' loads, their compute and memory reserved on every instance;
2. what each instance holds: its repository index (READY) and the loads in flight; a booting
   instance holds what was placed on it. An instance with an interruption notice, or draining,
   is no resident: the planner drains and terminates those, as it does any instance;
3. the type: the running fleet's, else the cheapest placement of the rates on new instances
   (`placement_fleet.cheapest_type`); the memory one instance may fill: the type's model
   memory, within `worker.memory_budget_bytes`;
4. `placement_fleet.replan` within `placement.max_moves`; each instance's placed models are
   saved (`Instance.placed_models`, which the front ends read on their sync), and each new bin
   is bought through the loop's launch path (`placement_fleet.bin_offerings`; the planner's
   `max_launches_per_tick` and `budget_per_hour` hold, a pool that refuses is avoided as the
   planner avoids it) with its placed models, loaded once it runs;
5. `advance`.

`advance` (each tick and each sync) reads the indexes and carries out
`provisioner.policy.placement_steps.steps`: unloads of the models drained long enough, loads
(in the background, a load may take seconds; pinned, so that the worker's cache never evicts
what the placement put there), drain marks (`Instance.draining_models`: the front ends stop
routing the model there, and asking for its load there, from their next sync; it is unloaded
`placement.unload_drain_s` later), and instances left with nothing placed drained once their
models are served elsewhere (the planner terminates them after `planner.drain_s`). Moves are
at most `placement.max_moves` per tick, however many syncs carry them out. A load that failed is
tried again at the next tick, not at every sync. An index read or an unload gives up after
`control.sync_s` (an instance that does not answer never holds up a sync: its last index is
kept), a load after `placement.load_timeout_s`.

The front ends route by residency (frontend/residency.py): a model goes to the instances that
hold it where it is placed, else to any that holds it, so a completed load is what makes an
instance routable (load before route), and a model drained off an instance is unloaded only
after they stopped (unload after drain). A model placed nowhere (scaled to zero) is unloaded
everywhere; its next request is served by a load on the instance that can load it soonest, or
by the serverless pool, whichever the front end's rule picks: the spill is charged in the
ledger as any spill, the load as busy time of that (instance, model) (the front end counts its
own loads' seconds, `load_seconds` counts the placement's), by which the ledger shares each
instance's charge among its models.

Route groups (`placement.groups`, issue 19 item 5, Cortex's router API): the fleet's models are
split by name (provisioner/policy/route_groups.py) and each group is placed as above on
instances of its own (`PlacementApplier`: its own type and memory limit, a share of
`placement.max_moves`), whose `Instance.models` list that group's models alone: the worker
loads, and the front ends route and load there (frontend/links.py `serves`), only that group's
models. Requests carry no group: a model's instances are its group's.

The many-model simulator (mark/apps/simulator/many_model.py) follows the same policy functions
(`placement_fleet`), with one difference: it leaves a model that is placed nowhere to its cache
(loaded until memory is needed) where this unloads it everywhere (issue 19 item 4).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp

from mark.adapters.db import Database, Fence
from mark.adapters.http_pool import HttpPool
from mark.adapters.repository import (
    IndexRead,
    IndexUnreadable,
    LoadFailed,
    read_index,
    request_load,
    request_unload,
)
from mark.apps.control import metrics
from mark.core.config import Config
from mark.core.errors import Fenced
from mark.core.types import (
    ActionKind,
    Decision,
    Forecast,
    Instance,
    InstanceState,
    InstanceType,
    Model,
    Offering,
)
from provisioner.policy.actions import Drain, Launch, Plan, Terminate
from provisioner.policy.billing import price_now
from provisioner.policy.capacity import CapacityCache
from provisioner.policy.offerings import Offerings, cooling_pools
from provisioner.policy.placement import CacheShare, ModelNeed, Placement, Resident
from provisioner.policy.placement_fleet import (
    LoadCost,
    TypeOption,
    bin_offerings,
    cheapest_type,
    placement_rate,
    replan,
    split_cached,
)
from provisioner.policy.placement_steps import Member, PlacedFleet, steps
from provisioner.policy.route_groups import group_names, group_of, instance_group, share_moves
from provisioner.policy.snapshot import PlannerState

__all__ = ["PlacementApplier", "shares_instances"]

logger = logging.getLogger("mark.apps.control.placement")

Move = tuple[str, str]  # (instance id, model)
_MIB = 2**20
_LAUNCH_TRIES = 3


def shares_instances(model: Model, config: Config) -> bool:
    """Whether `model` belongs to the many-model fleet (see the module docstring)."""
    return (
        config.cloud.provider == "local"
        and config.worker.store is not None
        and model.memory_mb is not None
    )


def _names(models: Iterable[str], most: int = 5) -> str:
    listed = sorted(models)
    more = f", ... ({len(listed)} in all)" if len(listed) > most else ""
    return ", ".join(listed[:most]) + more


@dataclass
class PlacementApplier:
    """The many-model part of one control loop. `apply` carries out a plan's fleet operations
    (the loop's `_apply`: launches, drains, terminations; True when a launch was refused for
    capacity), `planner_state` is the loop's (pools cooling down), `fence` its lease's term.

    Each route group (`placement.groups`, provisioner/policy/route_groups.py) is placed apart,
    in the rules' order ("rest" last), on instances of its own: its type and its memory limit
    are its own (the groups share no instance: a group of CPU models and one of GPU models
    each get the cheapest type for them). The fleet's bounds hold over all groups together:
    `placement.max_moves` is split among the groups with models or instances
    (`route_groups.share_moves`), and the launches of one tick stay within
    `planner.max_launches_per_tick`, the earlier groups first. With no rules there is one
    group, "rest": every model of the fleet, with the whole budget, as before."""

    db: Database
    config: Config
    cache: CapacityCache
    apply: Callable[[Plan, float], Awaitable[bool]]
    planner_state: Callable[[], PlannerState]
    fence: Callable[[], Fence | None]
    load_seconds: dict[Move, float] = field(default_factory=dict)
    """Cumulative seconds the placement's loads took, per (instance, model): busy time."""
    _groups: dict[str, _GroupPlacement] = field(init=False)
    _launches: _Launches = field(init=False)

    def __post_init__(self) -> None:
        self._launches = _Launches()
        self._groups = {
            name: _GroupPlacement(
                self.db,
                self.config,
                self.cache,
                self.apply,
                self.planner_state,
                self.fence,
                name,
                self.load_seconds,
                self._launches,
            )
            for name in group_names(self.config.placement.groups)
        }

    async def tick(
        self,
        now_s: float,
        models: Sequence[Model],
        forecasts: Mapping[str, Forecast],
        offerings: Sequence[Offering],
        types: Mapping[str, InstanceType],
        interruptions: Collection[str],
    ) -> dict[str, Placement]:
        """Place each route group's share of the many-model fleet's `models` and start carrying
        it out; the placement of each group that has one (no fleet, or no type can hold it:
        none)."""
        cfg = self.config.placement
        rules = cfg.groups
        memory_mb = {m.name: float(m.memory_mb or 0.0) for m in models}
        rates = {
            m.name: placement_rate(
                forecasts[m.name].mean_rps,
                forecasts[m.name].upper_rps,
                forecasts[m.name].bucket_s,
                cfg.min_expected_requests,
            )
            for m in models
        }
        means = {
            m.name: sum(forecasts[m.name].mean_rps) / max(len(forecasts[m.name].mean_rps), 1)
            for m in models
        }
        members: dict[str, list[Model]] = {name: [] for name in self._groups}
        for m in models:
            members[group_of(m.name, rules)].append(m)
        self._launches.count = 0
        housing = {
            instance_group(i.models, rules)
            for i in await self.db.list_instances()
            if _in_fleet(i) and i.id not in interruptions
        }
        # the groups with something to place: instances, or a model with traffic
        active = [
            name
            for name in self._groups
            if name in housing or any(rates[m.name] > 0 for m in members[name])
        ]
        budgets = share_moves(cfg.max_moves, active)
        placements: dict[str, Placement] = {}
        counted = [(0, len(members[n]), 0) for n in self._groups if n not in budgets and members[n]]
        for name, group in self._groups.items():
            if name not in budgets:
                continue
            placement, counts = await group.tick(
                now_s,
                members[name],
                rates,
                means,
                memory_mb,
                offerings,
                types,
                interruptions,
                max_moves=budgets[name],
            )
            if placement is not None:
                placements[name] = placement
            if counts is not None:
                counted.append(counts)
        if counted:
            metrics.record_placement(*(sum(c[k] for c in counted) for k in range(3)))
        return placements

    async def advance(self, now_s: float) -> None:
        """Each group's next moves towards its last placement (`placement_steps.steps`)."""
        for group in self._groups.values():
            await group.advance(now_s)

    async def settled(self) -> None:
        """Until the loads in flight now have ended (tests, shutdown)."""
        for group in self._groups.values():
            await group.settled()

    async def close(self) -> None:
        for group in self._groups.values():
            await group.close()


@dataclass
class _Launches:
    """The placement's launches this tick, over every group (`planner.max_launches_per_tick`)."""

    count: int = 0


@dataclass
class _GroupPlacement:
    """The placement of one route group (`group`): the instances whose models are mostly of it
    (`route_groups.instance_group`), saved with its models alone as `Instance.models`."""

    db: Database
    config: Config
    cache: CapacityCache
    apply: Callable[[Plan, float], Awaitable[bool]]
    planner_state: Callable[[], PlannerState]
    fence: Callable[[], Fence | None]
    group: str
    load_seconds: dict[Move, float]
    launches: _Launches
    _ticked: bool = False
    _rates: dict[str, float] = field(default_factory=dict)
    _memory_mb: dict[str, float] = field(default_factory=dict)
    _limit_mb: float = 0.0
    _for_room: frozenset[Move] = frozenset()
    _kept: int = 0  # bins that serve the cache alone (`placement_steps.PlacedFleet.kept`)
    _held: dict[str, frozenset[str]] = field(default_factory=dict)  # last index read
    _loads: dict[Move, asyncio.Task[None]] = field(default_factory=dict)
    _failed: set[Move] = field(default_factory=set)  # loads not tried again until the next tick
    _since: dict[Move, float] = field(default_factory=dict)  # when each drain began
    _spent: int = 0  # moves since the last tick
    _max_moves: int = 0  # its share of placement.max_moves until the next tick
    _unplaced: dict[str, str] = field(default_factory=dict)

    # -- the tick ---------------------------------------------------------------------------

    @property
    def _of_group(self) -> str:
        """The group, for the decision log, where there are groups."""
        return f" of route group {self.group!r}" if self.config.placement.groups else ""

    def _mine(self, inst: Instance) -> bool:
        """A live instance of the many-model fleet, of this group."""
        return _in_fleet(inst) and (
            instance_group(inst.models, self.config.placement.groups) == self.group
        )

    async def tick(
        self,
        now_s: float,
        models: Sequence[Model],
        placement_rates: Mapping[str, float],
        mean_rates: Mapping[str, float],
        memory_mb: Mapping[str, float],
        offerings: Sequence[Offering],
        types: Mapping[str, InstanceType],
        interruptions: Collection[str],
        *,
        max_moves: int,
    ) -> tuple[Placement | None, tuple[int, int, int] | None]:
        """Place the group's `models` at their placement rates with at most `max_moves` moves
        until the next tick, and start carrying it out (`memory_mb`: every shared model's, for
        what its instances hold of other groups); None when the group has no fleet (or no type
        can hold it), and its models placed, scaled to zero and unplaced (None: not counted)."""
        live = await self.db.list_instances()
        fleet = [i for i in live if self._mine(i) and i.id not in interruptions]
        cfg = self.config.placement
        rates = {m.name: placement_rates[m.name] for m in models}
        if not fleet and not any(r > 0 for r in rates.values()):
            return None, ((0, len(models), 0) if models else None)
        self._spent = 0
        self._max_moves = max_moves
        self._failed.clear()
        running = [i for i in fleet if i.state == InstanceState.RUNNING]
        held = await self._read(running)
        itype = await self._fleet_type(now_s, fleet, models, rates, mean_rates, offerings, types)
        if itype is None:
            return None, None
        limit_mb = itype.model_capacity_mb
        if self.config.worker.memory_budget_bytes is not None:
            limit_mb = min(limit_mb, self.config.worker.memory_budget_bytes / _MIB)
        needs, unplaced = self._needs(models, rates, itype.name)
        needs, cached = self._split(needs, mean_rates, limit_mb)
        mine = [i for i in fleet if i.offering.instance_type == itype.name]
        residents = [Resident(i.id, self._holding(i, held)) for i in mine]
        placement = replan(
            needs,
            residents,
            memory_limit_mb=limit_mb,
            max_moves=max_moves,
            cache=self.cache,
            replicate_above=cfg.replicate_above,
            cached=cached,
        )
        self._kept = sum(1 for b in placement.bins if b.reserve and not b.replicas)
        unplaced.update(placement.unplaced)
        self._rates = rates
        self._memory_mb = dict(memory_mb)
        self._limit_mb = limit_mb
        self._for_room = frozenset(placement.unload)
        self._ticked = True
        group = tuple(sorted(m.name for m in models))
        if not await self._save_placement(placement, fleet, group):
            return None, None
        await self._note_unplaced(now_s, unplaced)
        await self._launch(now_s, placement, itype, group, offerings, live, limit_mb)
        zero = sum(1 for r in rates.values() if r <= 0)
        await self.advance(now_s)
        return placement, (len(placement.replicas), zero, len(unplaced))

    def _needs(
        self, models: Sequence[Model], rates: Mapping[str, float], type_name: str
    ) -> tuple[list[ModelNeed], dict[str, str]]:
        """Each model as the placement sees it on `type_name`; those that cannot run there."""
        needs: list[ModelNeed] = []
        unplaced: dict[str, str] = {}
        batching = self.config.batching.enabled
        for m in models:
            profile = m.profiles.get(type_name)
            if profile is None:
                if rates[m.name] > 0:
                    unplaced[m.name] = f"no profile on {type_name}, the fleet's type"
                continue
            memory_mb = float(m.memory_mb or 0.0)
            max_batch = m.max_batch if batching else 1
            needs.append(ModelNeed(m.name, rates[m.name], memory_mb, profile, m.slo, max_batch))
        return needs, unplaced

    def _split(
        self, needs: Sequence[ModelNeed], mean_rates: Mapping[str, float], limit_mb: float
    ) -> tuple[list[ModelNeed], CacheShare]:
        """`placement_fleet.split_cached` with the live loop's load costs (module docstring)."""
        load_s = self.config.batching.default_load_s
        costs = {n.name: LoadCost(load_s, n.profile.service_ms(1) / 1000.0) for n in needs}
        return split_cached(
            needs,
            costs,
            mean_rates,
            protect_s=self.config.worker.protect_s,
            memory_usd_per_mb_s=0.0,
            allowance_share=self.config.placement.miss_allowance_share,
            memory_limit_mb=limit_mb,
            cache=self.cache,
        )

    def _holding(self, inst: Instance, held: Mapping[str, frozenset[str]]) -> frozenset[str]:
        """What `inst` holds for the placement: its index (a booting one: its placement) and
        the loads in flight there."""
        placed = frozenset(inst.placed_models or ())
        if inst.state != InstanceState.RUNNING:
            return placed
        loading = {m for iid, m in self._loads if iid == inst.id}
        return held.get(inst.id, placed) | loading

    async def _fleet_type(
        self,
        now_s: float,
        fleet: Sequence[Instance],
        models: Sequence[Model],
        rates: Mapping[str, float],
        mean_rates: Mapping[str, float],
        offerings: Sequence[Offering],
        types: Mapping[str, InstanceType],
    ) -> InstanceType | None:
        """The running fleet's type (the most common), else the cheapest for the rates."""
        if fleet:
            counts: dict[str, int] = {}
            for inst in fleet:
                counts[inst.offering.instance_type] = counts.get(inst.offering.instance_type, 0) + 1
            name = min(counts, key=lambda t: (-counts[t], t))
            if name in types:
                return types[name]
        usable = self._offerings(offerings, now_s)
        options = []
        for name, itype in sorted(types.items()):
            if not all(name in m.profiles for m in models):
                continue
            markets = [o for o in usable.available() if o.instance_type == name]
            if not self.config.planner.spot:
                markets = [o for o in markets if o.market.value == "on-demand"]
            price = min((o.price_per_hour for o in markets), default=None)
            limit_mb = itype.model_capacity_mb
            if self.config.worker.memory_budget_bytes is not None:
                limit_mb = min(limit_mb, self.config.worker.memory_budget_bytes / _MIB)
            needs, _ = self._needs(models, rates, name)
            placed, cached = self._split(needs, mean_rates, limit_mb)
            options.append(TypeOption(name, price, limit_mb, tuple(placed), cached))
        chosen, reasons = cheapest_type(options, self.cache, self.config.placement.replicate_above)
        if chosen is None:
            why = "; ".join(reasons) or "no instance type has a profile of every model"
            await self._decide(
                [
                    _decision(
                        now_s,
                        ActionKind.ERROR,
                        f"placement: no type holds the fleet{self._of_group}: {why}",
                    )
                ]
            )
            return None
        return types[chosen]

    def _offerings(self, offerings: Sequence[Offering], now_s: float) -> Offerings:
        """The offerings less the pools the planner avoids now (interrupted, refused)."""
        state = self.planner_state()
        cooldown = self.config.planner.pool_cooldown_s
        avoided = cooling_pools(state.preempted_pools, now_s, cooldown).keys() | (
            cooling_pools(state.refused_pools, now_s, cooldown).keys()
        )
        return Offerings.of(offerings).avoiding(avoided)

    async def _save_placement(
        self, placement: Placement, fleet: Sequence[Instance], group: tuple[str, ...]
    ) -> bool:
        """Each instance's placed models (none where it is in no bin) and the models it serves
        (the fleet's group); False when the lease was lost."""
        placed = {b.instance_id: tuple(sorted(b.rates)) for b in placement.bins if b.instance_id}
        for inst in fleet:
            wanted = placed.get(inst.id, ())
            if inst.placed_models == wanted and inst.models == group:
                continue
            updated = inst.model_copy(update={"placed_models": wanted, "models": group})
            if not await self._save(updated):
                return False
        return True

    async def _note_unplaced(self, now_s: float, unplaced: Mapping[str, str]) -> None:
        """A HOLD decision for each model newly left out of the placement, with why."""
        fresh = {m: why for m, why in unplaced.items() if self._unplaced.get(m) != why}
        self._unplaced = dict(unplaced)
        await self._decide(
            [
                _decision(
                    now_s,
                    ActionKind.HOLD,
                    f"placement: {m} fits no instance ({why}); its requests are loaded where "
                    "an instance has room, or spilled",
                    model=m,
                )
                for m, why in sorted(fresh.items())
            ]
        )

    async def _launch(
        self,
        now_s: float,
        placement: Placement,
        itype: InstanceType,
        group: tuple[str, ...],
        offerings: Sequence[Offering],
        live: Sequence[Instance],
        limit_mb: float,
    ) -> None:
        """Buy an instance for each new bin through the loop's launch path."""
        new = [b for b in placement.bins if b.instance_id is None]
        if not new:
            return
        planner = self.config.planner
        fleet = [i for i in live if self._mine(i)]
        prices = Offerings.of(offerings).prices()
        spend = sum(price_now(i, prices) for i in live)
        for k, b in enumerate(new):
            placed = tuple(sorted(b.rates))
            left = len(new) - k
            if self.launches.count >= planner.max_launches_per_tick:
                why = f"launch caps bind (max_launches_per_tick {planner.max_launches_per_tick})"
                await self._held_back(now_s, ActionKind.LAUNCH_CAPPED, why, left)
                return
            for _ in range(_LAUNCH_TRIES):
                usable = self._offerings(offerings, now_s)
                chosen = bin_offerings(
                    1,
                    itype.name,
                    usable,
                    fleet,
                    spot=planner.spot,
                    spot_max_share=planner.spot_max_share,
                )
                if not chosen:
                    why = f"no offering of {itype.name} is available"
                    await self._held_back(now_s, ActionKind.HOLD, why, left)
                    return
                offering = chosen[0]
                budget = planner.budget_per_hour
                if budget is not None and spend + offering.price_per_hour > budget + 1e-9:
                    why = f"budget ${budget:.2f}/h binds"
                    await self._held_back(now_s, ActionKind.BUDGET_LIMITED, why, left)
                    return
                reason = (
                    f"placement: a new {itype.name}{self._of_group} for {len(placed)} models "
                    f"({_names(placed)}), occupancy {b.occupancy:.2f}, {b.memory_mb:.4g} of "
                    f"{limit_mb:.4g} MB; {offering.key} at ${offering.price_per_hour:.4f}/h"
                )
                action = Launch(
                    (placed or group)[0],
                    offering,
                    reason,
                    itype.charge_usd(planner.horizon_s, offering.price_per_hour),
                    models=group,
                    placed=placed,
                )
                decision = _decision(
                    now_s,
                    ActionKind.LAUNCH,
                    reason,
                    model=(placed or group)[0],
                    offering_key=offering.key,
                    expected_cost_usd=action.expected_cost_usd,
                )
                if not await self._decide([decision]):
                    return
                if not await self.apply(Plan((action,), (), self.planner_state()), now_s):
                    self.launches.count += 1
                    spend += offering.price_per_hour
                    fleet.append(_placeholder(offering))
                    break
                # refused for capacity: the loop recorded the pool, the next try avoids it

    async def _held_back(self, now_s: float, kind: ActionKind, why: str, bins: int) -> None:
        await self._decide(
            [
                _decision(
                    now_s,
                    kind,
                    f"placement: {why}: {bins} new instance(s) not bought; their models are "
                    "loaded where an instance has room, or spilled",
                )
            ]
        )

    # -- carrying it out --------------------------------------------------------------------

    async def advance(self, now_s: float) -> None:
        """The next moves towards the last placement (`placement_steps.steps`), carried out."""
        if not self._ticked:
            return  # no rates yet (a restart): nothing is drained before a tick placed
        fleet = [i for i in await self.db.list_instances() if self._mine(i)]
        if not fleet:
            return
        running = [i for i in fleet if _serving(i)]
        held = await self._read(running)
        blocked = set(self._loads) | self._failed
        members = tuple(
            Member(
                i.id,
                _serving(i),
                frozenset(i.placed_models or ()),
                held.get(i.id, frozenset()) if _serving(i) else frozenset(),
                loading=frozenset(m for iid, m in blocked if iid == i.id),
                draining={m: self._since.setdefault((i.id, m), now_s) for m in i.draining_models},
            )
            for i in fleet
        )
        cfg = self.config.placement
        todo = steps(
            PlacedFleet(
                members, self._rates, self._memory_mb, self._limit_mb, self._for_room, self._kept
            ),
            now_s=now_s,
            drain_s=cfg.unload_drain_s,
            budget=self._max_moves - self._spent,
        )
        if not todo:
            return
        self._spent += todo.moves
        by_id = {i.id: i for i in fleet}
        async with aiohttp.ClientSession() as session:
            for iid, model in todo.unloads:
                await self._unload(session, by_id[iid], model, now_s)
        for iid, model in todo.loads:
            await self._start_load(by_id[iid], model, now_s)
        marks = {i.id: set(i.draining_models) for i in fleet}
        for iid, model in todo.cleared:
            marks[iid].discard(model)
            self._since.pop((iid, model), None)
        for iid, model in todo.drains:
            marks[iid].add(model)
            self._since[(iid, model)] = now_s
            metrics.record_move("drain", True)
        for inst in fleet:
            wanted = tuple(sorted(marks[inst.id]))
            if wanted != inst.draining_models:
                if not await self._save(inst.model_copy(update={"draining_models": wanted})):
                    return
        await self._retire(now_s, [by_id[i] for i in todo.retire])

    async def _retire(self, now_s: float, instances: Sequence[Instance]) -> None:
        """Drain the instances left with nothing placed (a booting one is terminated)."""
        actions: list[Drain | Terminate] = []
        decisions = []
        for inst in instances:
            reason = "placement: nothing placed on it, and its models are served elsewhere"
            model = inst.models[0] if inst.models else ""
            if inst.state == InstanceState.RUNNING:
                actions.append(Drain(inst.id, model, reason))
                kind = ActionKind.DRAIN
            else:
                actions.append(Terminate(inst.id, model, reason))
                kind = ActionKind.TERMINATE
            decisions.append(
                _decision(now_s, kind, reason, instance_id=inst.id, offering_key=inst.offering.key)
            )
        if actions and await self._decide(decisions):
            await self.apply(Plan(tuple(actions), (), self.planner_state()), now_s)

    async def _unload(
        self, session: aiohttp.ClientSession, inst: Instance, model: str, now_s: float
    ) -> None:
        assert inst.endpoint is not None
        drained_s = now_s - self._since.get((inst.id, model), now_s)
        try:
            await request_unload(session, inst.endpoint, model, self.config.control.sync_s)
        except LoadFailed as exc:  # still marked: the next step tries again
            logger.warning("unloading %s from %s failed: %s", model, inst.id, exc.reason)
            metrics.record_move("unload", False)
            return
        metrics.record_move("unload", True)
        elsewhere = group_of(model, self.config.placement.groups)
        if elsewhere != self.group:
            why = f"it is of route group {elsewhere!r} now, placed on that group's instances"
        elif self._rates.get(model, 0.0) <= 0:
            why = (
                "scaled to zero: the forecast expects fewer than "
                f"{self.config.placement.min_expected_requests:g} requests over the horizon"
            )
        else:
            why = "its memory makes room for what the placement put there"
        await self._decide(
            [
                _decision(
                    now_s,
                    ActionKind.UNLOAD,
                    f"placement: unloaded {model} from {inst.id} after {drained_s:.0f} s off "
                    f"the front ends' routes: {why}",
                    model=model,
                    instance_id=inst.id,
                    offering_key=inst.offering.key,
                )
            ]
        )

    async def _start_load(self, inst: Instance, model: str, now_s: float) -> None:
        key = (inst.id, model)
        rate = self._rates.get(model, 0.0)
        await self._decide(
            [
                _decision(
                    now_s,
                    ActionKind.LOAD,
                    f"placement: loading {model} on {inst.id} ({rate:.2f} rps placed across "
                    "its replicas); the front ends route it there once loaded",
                    model=model,
                    instance_id=inst.id,
                    offering_key=inst.offering.key,
                )
            ]
        )
        self._loads[key] = asyncio.create_task(self._load(inst, model, now_s))

    async def _load(self, inst: Instance, model: str, now_s: float) -> None:
        key = (inst.id, model)
        assert inst.endpoint is not None
        started = time.monotonic()
        try:
            async with aiohttp.ClientSession() as session:
                await request_load(
                    session,
                    inst.endpoint,
                    model,
                    self.config.placement.load_timeout_s,
                    pin=True,
                )
        except LoadFailed as exc:
            logger.warning("loading %s on %s failed: %s", model, inst.id, exc.reason)
            metrics.record_move("load", False)
            self._failed.add(key)
            await self._decide(
                [
                    _decision(
                        now_s,
                        ActionKind.ERROR,
                        f"placement: loading {model} on {inst.id} failed ({exc.reason}); "
                        "tried again at the next tick",
                        model=model,
                        instance_id=inst.id,
                    )
                ]
            )
        else:
            metrics.record_move("load", True)
            self.load_seconds[key] = self.load_seconds.get(key, 0.0) + time.monotonic() - started
        finally:
            self._loads.pop(key, None)

    async def settled(self) -> None:
        """Until the loads in flight now have ended (tests, shutdown)."""
        await asyncio.gather(*list(self._loads.values()), return_exceptions=True)

    async def close(self) -> None:
        for task in self._loads.values():
            task.cancel()
        await self.settled()

    # -- reading and writing ----------------------------------------------------------------

    async def _read(self, instances: Sequence[Instance]) -> dict[str, frozenset[str]]:
        """The READY models of each instance by its index; an index that cannot be read keeps
        the last read (none yet: its placement)."""
        timeout_s = self.config.control.sync_s
        http = HttpPool(limit=max(len(instances), 1), timeout_s=timeout_s)
        try:
            reads = await asyncio.gather(
                *(read_index(http, i.endpoint or "", timeout_s) for i in instances),
                return_exceptions=True,
            )
        finally:
            await http.close()
        for inst, read in zip(instances, reads, strict=True):
            if isinstance(read, IndexRead):
                self._held[inst.id] = read.ready
            elif read is None:  # no repository API: it holds what it was started with
                self._held[inst.id] = frozenset(inst.models)
            elif isinstance(read, IndexUnreadable):
                logger.info("keeping the last index of %s: %s", inst.id, read)
            else:
                logger.warning("reading the index of %s failed: %r", inst.id, read)
        return {i.id: self._held.get(i.id, frozenset(i.placed_models or ())) for i in instances}

    async def _save(self, instance: Instance) -> bool:
        try:
            await self.db.save_instance(instance, fence=self.fence())
        except Fenced as exc:
            logger.warning("%s", exc)
            return False
        return True

    async def _decide(self, decisions: list[Decision]) -> bool:
        if not decisions:
            return True
        try:
            await self.db.add_decisions(decisions, fence=self.fence())
        except Fenced as exc:
            logger.warning("%s", exc)
            return False
        metrics.record_decisions(decisions)
        return True


def _in_fleet(inst: Instance) -> bool:
    """A live, serving or booting instance of the many-model fleet."""
    return inst.placed_models is not None and inst.state in (
        InstanceState.PENDING,
        InstanceState.RUNNING,
    )


def _serving(inst: Instance) -> bool:
    return inst.state == InstanceState.RUNNING and inst.endpoint is not None


def _placeholder(offering: Offering) -> Instance:
    """A launch of this tick, for the next bin's choice of pool and market."""
    return Instance(id=f"new-{offering.key}", offering=offering, launched_at_s=0.0)


def _decision(now_s: float, action: ActionKind, reason: str, **fields: object) -> Decision:
    return Decision.model_validate({"at_s": now_s, "action": action, "reason": reason, **fields})
