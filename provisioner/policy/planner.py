"""The greedy planner: a pure function from a fleet snapshot to actions, decisions and the state
to carry to the next tick (DESIGN.md, "Greedy provisioning"; MArk's Algorithm 1).

One `plan` call, in order:
1. Draining instances whose drain time is over are terminated. Instances with an interruption
   notice are drained (pending ones terminated) and their pool is avoided for
   `pool_cooldown_s`; the greedy then replaces their capacity at once. Instances of models that
   are no longer registered are drained.
2. For each model, `planner_greedy.cover_demand` covers the forecast upper quantile over the
   horizon (the mean until the model's most cost-efficient type could be ready, with
   `tail_after_lead`: a nearer tail would only buy stopgaps costing many times more per
   request, and queueing and spill take it instead), spot hedged against the loss of a pool,
   from its live instances (free to keep while paid; spot at its pool's current price) and the
   eligible offerings
   (available, pool not cooling down, spot allowed, type allowed or a backup type) whose
   capacity at the SLO (`provisioner.policy.capacity`, cached) is positive. Candidate rows are built
   once per plan, not per model (issue 6: 1,000 models x 100 offerings in under 100 ms): one
   block per model shape (profiled types and capacities), one gather for all live instances.
3. A launch that the next tick could still make in time (the bucket it is first needed in
   starts at or after now + tick + launch overhead) is deferred, not bought now.
4. Budget: launches are accepted in increasing cost per request across all models while the
   hourly price of every live instance plus the accepted launches stays within
   `budget_per_hour`; each model left short gets a BUDGET_LIMITED decision with the demand left
   uncovered, and keeps all its instances.
5. Release: a running instance the greedy did not need is drained only when its paid time ends
   within `release_window_s`, the model has launched nothing for `scale_in_hold_s` (no
   launch/release flapping), nothing is deferred or uncovered for the model, and at least
   `min_instances` stay. Otherwise it is held, and the decision says why.

Every action comes with a Decision whose reason carries the numbers (forecast, capacity, cost
per million requests).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from mark.core.config import PlannerConfig
from mark.core.types import (
    ActionKind,
    Decision,
    Forecast,
    Instance,
    InstanceState,
    InstanceType,
    Market,
    Model,
    Offering,
)
from provisioner.policy.capacity import DEFAULT_CACHE, CapacityCache
from provisioner.policy.planner_greedy import (
    Candidates,
    Cover,
    Demand,
    cover_demand,
    demand_buckets,
)

__all__ = [
    "ModelDemand",
    "PlannerState",
    "FleetSnapshot",
    "Launch",
    "Drain",
    "Terminate",
    "Action",
    "Plan",
    "plan",
    "paid_until_s",
]


@dataclass(frozen=True, slots=True)
class ModelDemand:
    model: Model
    forecast: Forecast


@dataclass(frozen=True, slots=True)
class PlannerState:
    """What the planner remembers between ticks: when each model last launched (the scale-in
    hold starts there) and which pools were interrupted when (avoided for pool_cooldown_s)."""

    last_launch_s: Mapping[str, float] = field(default_factory=dict)
    preempted_pools: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    """Everything `plan` sees. `interruptions` maps instance ids with a notice to the time the
    cloud takes them back; `tick_s` is when the next plan runs (launches that can wait until
    then are deferred)."""

    now_s: float
    models: Mapping[str, ModelDemand]
    instances: tuple[Instance, ...]
    offerings: tuple[Offering, ...]
    instance_types: Mapping[str, InstanceType]
    planner_state: PlannerState = field(default_factory=PlannerState)
    interruptions: Mapping[str, float] = field(default_factory=dict)
    tick_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Launch:
    model: str
    offering: Offering
    reason: str
    expected_cost_usd: float
    capacity_rps: float = 0.0


@dataclass(frozen=True, slots=True)
class Drain:
    instance_id: str
    model: str
    reason: str


@dataclass(frozen=True, slots=True)
class Terminate:
    instance_id: str
    model: str
    reason: str


Action = Launch | Drain | Terminate


@dataclass(frozen=True, slots=True)
class Plan:
    actions: tuple[Action, ...]
    decisions: tuple[Decision, ...]
    state: PlannerState
    deferred: tuple[Launch, ...] = ()


def paid_until_s(instance: Instance, itype: InstanceType, now_s: float) -> float:
    """End of the time already bought: billing runs from running (launch while pending),
    charged at least `billing_minimum_s`, in steps of `billing_granularity_s` (EC2 Linux: per
    second, 60 s minimum, so after the first minute this is ~now)."""
    start = instance.running_at_s if instance.running_at_s is not None else instance.launched_at_s
    billed = max(now_s - start, itype.billing_minimum_s)
    step = itype.billing_granularity_s
    return start + math.ceil(billed / step - 1e-9) * step


def price_now(instance: Instance, prices: Mapping[str, float]) -> float:
    """What a live instance costs per hour now, given the offerings' current prices by key: a
    spot instance pays its pool's current price (EC2 bills spot at the market price, not at
    the price it was launched at), so it is compared with a new launch in the same pool at the
    same price."""
    if instance.offering.market == Market.SPOT:
        return prices.get(instance.offering.key, instance.offering.price_per_hour)
    return instance.offering.price_per_hour


def _per_million(usd_per_request: float) -> str:
    return f"${usd_per_request * 1e6:.2f}/M req"


def _model_of(instance: Instance) -> str:
    return instance.models[0] if instance.models else ""


@dataclass
class _Builder:
    """Accumulates actions and decisions in a deterministic order."""

    now_s: float
    actions: list[Action] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    deferred: list[Launch] = field(default_factory=list)

    def decide(
        self,
        action: ActionKind,
        reason: str,
        *,
        model: str | None = None,
        instance_id: str | None = None,
        offering_key: str | None = None,
        expected_cost_usd: float = 0.0,
        forecast_upper_rps: tuple[float, ...] = (),
    ) -> None:
        self.decisions.append(
            Decision(
                at_s=self.now_s,
                action=action,
                reason=reason,
                model=model,
                instance_id=instance_id,
                offering_key=offering_key,
                expected_cost_usd=expected_cost_usd,
                forecast_upper_rps=forecast_upper_rps,
            )
        )

    def retire(self, inst: Instance, reason: str) -> None:
        """Take `inst` out of service: a running instance drains first (its queue empties), a
        pending one or one whose drain is over is terminated."""
        model = _model_of(inst)
        action: Drain | Terminate
        if inst.state == InstanceState.RUNNING:
            kind, action = ActionKind.DRAIN, Drain(inst.id, model, reason)
        else:
            kind, action = ActionKind.TERMINATE, Terminate(inst.id, model, reason)
        self.actions.append(action)
        self.decide(
            kind, reason, model=model or None, instance_id=inst.id, offering_key=inst.offering.key
        )


@dataclass(frozen=True, slots=True)
class _ModelPlan:
    name: str
    demand: Demand
    cover: Cover
    live: tuple[Instance, ...]
    offerings: tuple[Offering, ...]  # per candidate index (a live instance's own offering)
    capacity_rps: np.ndarray  # per candidate index


@dataclass
class _TypeOfferings:
    """The offerings of one type that can be bought now, as arrays for the greedy, with their
    ready and cost rows per demand grid (the same for every model: computed once per plan)."""

    itype: InstanceType
    offerings: tuple[Offering, ...]
    price_per_hour: np.ndarray
    pool: np.ndarray
    backup: np.ndarray
    rows: dict[tuple[float, int], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def grid_rows(self, demand: Demand) -> tuple[np.ndarray, np.ndarray]:
        key = (float(demand.durations_s[0]), len(demand.durations_s))
        found = self.rows.get(key)
        if found is None:
            ready_at = demand.now_s + self.itype.launch_overhead_s
            ready = ready_at <= demand.starts_s + 1e-6
            end = demand.starts_s + demand.durations_s - demand.now_s
            hold_s = np.maximum(end, self.itype.billing_minimum_s)
            count = len(self.offerings)
            found = (
                np.tile(ready, (count, 1)),
                np.outer(self.price_per_hour / 3600.0, hold_s),
            )
            self.rows[key] = found
        return found


def _spot_pools(snapshot: FleetSnapshot) -> dict[str, int]:
    """Spot pools (type x zone) of the offerings and the live instances, numbered in key
    order: the greedy caps spot capacity per pool by these numbers."""
    keys = {o.key for o in snapshot.offerings if o.market == Market.SPOT}
    keys.update(i.offering.key for i in snapshot.instances if i.offering.market == Market.SPOT)
    return {key: n for n, key in enumerate(sorted(keys))}


def _offering_table(
    snapshot: FleetSnapshot,
    config: PlannerConfig,
    cooling: Mapping[str, float],
    pool_of: Mapping[str, int],
) -> dict[str, _TypeOfferings]:
    """Eligible offerings per type: available, pool not cooling down, spot allowed, type
    allowed or a backup type."""
    primary = set(config.allowed_types)
    backup = set(config.backup_types) - primary
    grouped: dict[str, list[tuple[str, Offering]]] = {}
    for offering in snapshot.offerings:
        name = offering.instance_type
        key = offering.key
        if not offering.available or key in cooling or name not in snapshot.instance_types:
            continue
        if offering.market == Market.SPOT and not config.spot:
            continue
        if primary and name not in primary and name not in backup:
            continue
        grouped.setdefault(name, []).append((key, offering))
    table = {}
    for name, rows in sorted(grouped.items()):
        rows.sort(key=lambda row: row[0])
        table[name] = _TypeOfferings(
            itype=snapshot.instance_types[name],
            offerings=tuple(o for _, o in rows),
            price_per_hour=np.array([o.price_per_hour for _, o in rows]),
            pool=np.array([pool_of.get(key, -1) for key, _ in rows], dtype=int),
            backup=np.full(len(rows), name in backup),
        )
    return table


_GridKey = tuple[float, int]
_Shape = tuple[tuple[str, float], ...]  # (type, capacity at the SLO) a model can be served on


def _grid_key(demand: Demand) -> _GridKey:
    """Demands with equal first bucket length and bucket count share one grid in a plan (the
    starts and the last, partial bucket follow from now and the horizon)."""
    return (float(demand.durations_s[0]), len(demand.durations_s))


def _empty_candidates(nb: int, pools: int) -> Candidates:
    return Candidates(
        capacity_rps=np.zeros(0),
        ready=np.zeros((0, nb), dtype=bool),
        ready_rps=np.zeros((0, nb)),
        cost_usd=np.zeros((0, nb)),
        price_per_hour=np.zeros(0),
        existing=np.zeros(0, dtype=bool),
        backup=np.zeros(0, dtype=bool),
        pool=np.zeros(0, dtype=int),
        pools=pools,
    )


@dataclass(frozen=True, slots=True)
class _Rows:
    offerings: tuple[Offering, ...]  # per candidate index (a live instance's own offering)
    cands: Candidates


@dataclass
class _OfferingRows:
    """Offering candidate rows per (demand grid, profiled types with their capacities at the
    SLO). A fleet has few model shapes and one grid, so a 1,000-model plan builds a handful of
    blocks and every model of a shape shares its block (read-only) instead of rebuilding it."""

    table: Mapping[str, _TypeOfferings]
    pools: int
    built: dict[tuple[_GridKey, _Shape], _Rows] = field(default_factory=dict)
    leads: dict[_Shape, float] = field(default_factory=dict)

    def shape(self, caps: Mapping[str, float]) -> _Shape:
        """The eligible types of `caps` (a model's capacity per profiled type) with a positive
        capacity, in its order: what a model's offering rows depend on."""
        return tuple((name, cap) for name, cap in caps.items() if cap > 0 and name in self.table)

    def efficient_lead_s(self, shape: _Shape) -> float:
        """Launch overhead of the type of `shape` with the lowest price per unit of capacity at
        the SLO (its cheapest offering); 0 without one. Cached per shape, as the rows are."""
        found = self.leads.get(shape)
        if found is None:
            best = (math.inf, 0.0)
            for name, cap in shape:
                block = self.table[name]
                ratio = float(block.price_per_hour.min()) / cap
                best = min(best, (ratio, block.itype.launch_overhead_s))
            found = self.leads[shape] = best[1]
        return found

    def get(self, demand: Demand, shape: _Shape) -> _Rows:
        """Rows of the eligible offerings of the types in `shape`, in its order."""
        key = (_grid_key(demand), shape)
        found = self.built.get(key)
        if found is None:
            found = self._build(demand, shape)
            self.built[key] = found
        return found

    def _build(self, demand: Demand, shape: tuple[tuple[str, float], ...]) -> _Rows:
        if not shape:
            return _Rows((), _empty_candidates(len(demand.starts_s), self.pools))
        blocks = [self.table[name] for name, _ in shape]
        grids = [block.grid_rows(demand) for block in blocks]
        capacity = np.array(
            [cap for (_, cap), block in zip(shape, blocks, strict=True) for _o in block.offerings]
        )
        ready = np.concatenate([ready for ready, _ in grids])
        cands = Candidates(
            capacity_rps=capacity,
            ready=ready,
            ready_rps=ready * capacity[:, None],
            cost_usd=np.concatenate([cost for _, cost in grids]),
            price_per_hour=np.concatenate([b.price_per_hour for b in blocks]),
            existing=np.zeros(len(capacity), dtype=bool),
            backup=np.concatenate([b.backup for b in blocks]),
            pool=np.concatenate([b.pool for b in blocks]),
            pools=self.pools,
        )
        for array in (cands.capacity_rps, cands.ready, cands.ready_rps, cands.cost_usd):
            array.setflags(write=False)
        return _Rows(tuple(o for b in blocks for o in b.offerings), cands)


@dataclass
class _LiveRows:
    """The live instances of all models, grouped by model, as arrays: their ready and cost
    rows are computed for the whole fleet at once per demand grid, and each model takes its
    slice. Running instances serve now, pending ones once their launch overhead has passed;
    keeping one costs only the time past what is already paid."""

    instances: dict[str, tuple[Instance, ...]]
    span: dict[str, tuple[int, int]]
    ready_at_s: np.ndarray
    paid_until_s: np.ndarray
    price_per_hour: np.ndarray
    pool: np.ndarray
    rows: dict[_GridKey, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        live_by_model: Mapping[str, list[Instance]],
        snapshot: FleetSnapshot,
        pool_of: Mapping[str, int],
        prices: Mapping[str, float],
    ) -> _LiveRows:
        now = snapshot.now_s
        instances: dict[str, tuple[Instance, ...]] = {}
        span: dict[str, tuple[int, int]] = {}
        ready_at: list[float] = []
        paid: list[float] = []
        for name, live in live_by_model.items():
            instances[name] = tuple(live)
            span[name] = (len(ready_at), len(ready_at) + len(live))
            for inst in live:
                itype = snapshot.instance_types.get(inst.offering.instance_type)
                overhead = itype.launch_overhead_s if itype else 0.0
                running = inst.state == InstanceState.RUNNING
                ready_at.append(now if running else inst.launched_at_s + overhead)
                paid.append(max(paid_until_s(inst, itype, now), now) if itype else now)
        every = [inst for live in instances.values() for inst in live]
        return cls(
            instances=instances,
            span=span,
            ready_at_s=np.array(ready_at),
            paid_until_s=np.array(paid),
            price_per_hour=np.array([price_now(i, prices) for i in every]),
            pool=np.array([pool_of.get(i.offering.key, -1) for i in every], dtype=int),
        )

    def grid_rows(self, demand: Demand) -> tuple[np.ndarray, np.ndarray]:
        key = _grid_key(demand)
        found = self.rows.get(key)
        if found is None:
            end = demand.starts_s + demand.durations_s
            ready = self.ready_at_s[:, None] <= demand.starts_s[None, :] + 1e-6
            hold_s = np.maximum(end[None, :] - self.paid_until_s[:, None], 0.0)
            found = (ready, hold_s * (self.price_per_hour / 3600.0)[:, None])
            self.rows[key] = found
        return found

    def live(self, model: str) -> tuple[Instance, ...]:
        return self.instances.get(model, ())


@dataclass(frozen=True, slots=True)
class _ModelInput:
    name: str
    demand: Demand
    caps: Mapping[str, float]  # capacity at the SLO per profiled type
    offered: _Rows  # the offering rows of its shape


def _gather(
    live_part: np.ndarray, blocks: list[Candidates], field_name: str, index: np.ndarray
) -> np.ndarray:
    """Rows `index` of [live_part; that field of each block, in order]."""
    return np.concatenate([live_part] + [getattr(block, field_name) for block in blocks])[index]


def _fleet_candidates(inputs: list[_ModelInput], live: _LiveRows) -> list[_Rows]:
    """Every model's candidates: its live instances (capacity of their type for it, 0 when it
    has no profile there) ahead of its offering rows. Built for the whole fleet at once: per
    demand grid, one gather from [all live rows; every offering block] lays the models' rows
    end to end, and each model's Candidates are slices (views) of those arrays. Concatenating
    per model instead cost ~20 us per model, a fifth of the 100 ms budget at 1,000 models."""
    out: list[_Rows] = []
    by_grid: dict[_GridKey, list[int]] = {}
    for i, entry in enumerate(inputs):
        by_grid.setdefault(_grid_key(entry.demand), []).append(i)
        out.append(entry.offered)  # replaced below when the model has live instances
    live_capacity = [0.0] * len(live.ready_at_s)
    for entry in inputs:
        lo, hi = live.span.get(entry.name, (0, 0))
        for j, inst in enumerate(live.instances.get(entry.name, ()), start=lo):
            live_capacity[j] = entry.caps.get(inst.offering.instance_type, 0.0)
    for members in by_grid.values():
        if not any(entry.name in live.span for entry in (inputs[i] for i in members)):
            continue  # no live instance: each model's offering block is its candidates
        live_ready, live_cost = live.grid_rows(inputs[members[0]].demand)
        offset = len(live_capacity)  # sources: [all live rows; each offering block once]
        sources: list[Candidates] = []
        first_row: dict[int, int] = {}  # id(block) -> its first row in the sources
        seg_start: list[int] = []
        seg_len: list[int] = []
        for i in members:
            entry = inputs[i]
            lo, hi = live.span.get(entry.name, (0, 0))
            block = entry.offered.cands
            if id(block) not in first_row:
                first_row[id(block)] = offset
                offset += len(block.capacity_rps)
                sources.append(block)
            seg_start += [lo, first_row[id(block)]]
            seg_len += [hi - lo, len(block.capacity_rps)]
        lengths = np.array(seg_len)
        ends = np.cumsum(lengths)
        index = np.repeat(np.array(seg_start) - (ends - lengths), lengths) + np.arange(ends[-1])
        capacity = _gather(np.array(live_capacity), sources, "capacity_rps", index)
        ready = _gather(live_ready, sources, "ready", index)
        existing = np.arange(offset) < len(live_capacity)
        fleet = Candidates(
            capacity_rps=capacity,
            ready=ready,
            ready_rps=ready * capacity[:, None],
            cost_usd=_gather(live_cost, sources, "cost_usd", index),
            price_per_hour=_gather(live.price_per_hour, sources, "price_per_hour", index),
            existing=existing[index],
            backup=_gather(np.zeros(len(live_capacity), dtype=bool), sources, "backup", index),
            pool=_gather(live.pool, sources, "pool", index),
            pools=sources[0].pools,
        )
        row = 0
        for i in members:
            entry = inputs[i]
            here = live.instances.get(entry.name, ())
            n = len(here) + len(entry.offered.offerings)
            rows = slice(row, row + n)
            row += n
            if not here:
                continue
            cands = Candidates(
                capacity_rps=fleet.capacity_rps[rows],
                ready=fleet.ready[rows],
                ready_rps=fleet.ready_rps[rows],
                cost_usd=fleet.cost_usd[rows],
                price_per_hour=fleet.price_per_hour[rows],
                existing=fleet.existing[rows],
                backup=fleet.backup[rows],
                pool=fleet.pool[rows],
                pools=fleet.pools,
            )
            out[i] = _Rows(tuple(inst.offering for inst in here) + entry.offered.offerings, cands)
    return out


def plan(
    snapshot: FleetSnapshot, config: PlannerConfig, cache: CapacityCache | None = None
) -> Plan:
    """Actions for this tick and why; pure (no I/O, no clock: `snapshot.now_s` is the time)."""
    now = snapshot.now_s
    out = _Builder(now)
    state = snapshot.planner_state
    cooling = {
        key: at for key, at in state.preempted_pools.items() if now - at < config.pool_cooldown_s
    }
    live_by_model: dict[str, list[Instance]] = {}
    spend_per_hour = 0.0
    prices = {o.key: o.price_per_hour for o in snapshot.offerings}
    for inst in sorted(snapshot.instances, key=lambda i: i.id):
        if not inst.live:
            continue
        spend_per_hour += price_now(inst, prices)
        model = _model_of(inst)
        if inst.state == InstanceState.DRAINING:
            since = inst.draining_at_s if inst.draining_at_s is not None else now
            if now - since >= config.drain_s:
                out.retire(inst, f"drained for {now - since:.0f} s (drain_s {config.drain_s:g})")
            continue
        notice = snapshot.interruptions.get(inst.id)
        if notice is not None:
            cooling[inst.offering.key] = now
            why = (
                f"interruption notice: {inst.offering.key} takes it back at +{notice - now:.0f} s;"
                " replacing now and avoiding the pool for "
                f"{config.pool_cooldown_s:.0f} s"
            )
            out.retire(inst, why)
            continue
        if model not in snapshot.models:
            why = f"model {model!r} is not registered any more"
            out.retire(inst, why)
            continue
        live_by_model.setdefault(model, []).append(inst)

    pool_of = _spot_pools(snapshot)
    table = _offering_table(snapshot, config, cooling, pool_of)
    offered = _OfferingRows(table, len(pool_of))
    live_rows = _LiveRows.of(live_by_model, snapshot, pool_of, prices)
    capacities = DEFAULT_CACHE if cache is None else cache
    inputs: list[_ModelInput] = []
    for name in sorted(snapshot.models):
        wanted = snapshot.models[name]
        slo, max_batch = wanted.model.slo, wanted.model.max_batch
        caps = {
            type_name: capacities.get(profile, slo, max_batch).rate_rps
            for type_name, profile in wanted.model.profiles.items()
        }
        shape = offered.shape(caps)
        lead = offered.efficient_lead_s(shape) if config.tail_after_lead else 0.0
        demand = demand_buckets(wanted.forecast, now, config.horizon_s, now + lead)
        inputs.append(_ModelInput(name, demand, caps, offered.get(demand, shape)))
    plans: list[_ModelPlan] = []
    for item, rows in zip(inputs, _fleet_candidates(inputs, live_rows), strict=True):
        name, demand, cands = item.name, item.demand, rows.cands
        live = live_rows.live(name)
        cover = cover_demand(
            demand,
            cands,
            spot_max_share=config.spot_max_share if config.spot else 0.0,
            spot_min_pools=config.spot_min_pools,
            max_instances=config.max_instances_per_model,
        )
        cover = _with_floor(cover, cands, len(live), config.min_instances, demand)
        plans.append(_ModelPlan(name, demand, cover, live, rows.offerings, cands.capacity_rps))

    launched = _buy(plans, snapshot, config, spend_per_hour, out)
    for mp in plans:
        _report_unreachable(mp, launched, out)
        _release(mp, snapshot, config, launched, out)
    last_launch = dict(state.last_launch_s)
    for name in launched.bought:
        last_launch[name] = now
    return Plan(
        actions=tuple(out.actions),
        decisions=tuple(out.decisions),
        state=PlannerState(last_launch_s=last_launch, preempted_pools=cooling),
        deferred=tuple(out.deferred),
    )


def _report_unreachable(mp: _ModelPlan, bought: _Bought, out: _Builder) -> None:
    """Demand the greedy could not cover with anything (every candidate too late for it, or
    excluded by caps) is said in the log, so an operator sees why the spill path carries it."""
    if mp.name in bought.held or mp.name in bought.bought:
        return  # budget-limited or launching: those decisions already say what is uncovered
    gap = mp.demand.upper_rps - mp.cover.planned_rps
    uncovered = float(np.maximum.reduce(gap, initial=0.0))
    if uncovered <= 1e-6 * max(1.0, mp.demand.peak_rps):
        return
    first = int(np.argmax(gap > 1e-6 * max(1.0, mp.demand.peak_rps)))
    out.decide(
        ActionKind.HOLD,
        f"{uncovered:.1f} rps of the {mp.demand.peak_rps:.1f} rps forecast peak cannot be covered "
        f"from +{mp.demand.starts_s[first] - mp.demand.now_s:.0f} s: no offering can be ready in "
        "time or every candidate is capped; requests beyond capacity spill to serverless",
        model=mp.name,
    )


def _with_floor(cover: Cover, cands: Candidates, live: int, floor: int, demand: Demand) -> Cover:
    """min_instances: when fewer than `floor` instances are live or planned, add launches of
    the primary on-demand offering with the lowest price per unit of capacity (a model kept
    warm with no forecast load)."""
    missing = floor - live - len(cover.launches)
    if missing <= 0:
        return cover
    new = np.flatnonzero(
        ~cands.existing & ~cands.backup & (cands.pool < 0) & (cands.capacity_rps > 0)
    )
    if len(new) == 0:
        return cover
    k = int(new[np.argmin(cands.price_per_hour[new] / cands.capacity_rps[new])])
    row = cands.ready[k] * cands.capacity_rps[k]
    extra = tuple((k, math.inf, float(demand.starts_s[0])) for _ in range(missing))
    rows = np.vstack([cover.launch_rps, np.tile(row, (missing, 1))])
    return Cover(cover.kept, cover.launches + extra, cover.planned_rps + missing * row, rows)


@dataclass
class _Bought:
    bought: set[str] = field(default_factory=set)  # models that launched this tick
    held: set[str] = field(default_factory=set)  # models that keep everything this tick


def _buy(
    plans: list[_ModelPlan],
    snapshot: FleetSnapshot,
    config: PlannerConfig,
    spend_per_hour: float,
    out: _Builder,
) -> _Bought:
    now = snapshot.now_s
    result = _Bought()
    wanted: list[tuple[float, str, int, _ModelPlan]] = []
    for mp in plans:
        for idx, (k, ratio, needed_from) in enumerate(mp.cover.launches):
            overhead = snapshot.instance_types[mp.offerings[k].instance_type].launch_overhead_s
            if needed_from >= now + snapshot.tick_s + overhead:
                out.deferred.append(_launch(mp, idx, snapshot, config, True))
                result.held.add(mp.name)
                continue
            wanted.append((ratio, mp.name, idx, mp))
    wanted.sort(key=lambda w: (w[0], w[1], w[2]))
    dropped: dict[str, list[int]] = {}
    budget = config.budget_per_hour
    for _ratio, name, idx, mp in wanted:
        offering = mp.offerings[mp.cover.launches[idx][0]]
        price = offering.price_per_hour
        if budget is not None and spend_per_hour + price > budget + 1e-9:
            dropped.setdefault(name, []).append(idx)
            continue
        spend_per_hour += price
        launch = _launch(mp, idx, snapshot, config, False)
        out.actions.append(launch)
        out.decide(
            ActionKind.LAUNCH,
            launch.reason,
            model=name,
            offering_key=offering.key,
            expected_cost_usd=launch.expected_cost_usd,
            forecast_upper_rps=tuple(mp.demand.upper_rps.tolist()),
        )
        result.bought.add(name)
    for mp in plans:
        if mp.name not in dropped:
            continue
        idxs = dropped[mp.name]
        short = mp.cover.planned_rps - mp.cover.launch_rps[idxs].sum(axis=0)
        uncovered = float(np.max(mp.demand.upper_rps - short, initial=0.0))
        price = sum(mp.offerings[mp.cover.launches[i][0]].price_per_hour for i in idxs)
        out.decide(
            ActionKind.BUDGET_LIMITED,
            f"budget ${budget:.2f}/h binds: {len(idxs)} launch(es) (${price:.3f}/h) not made; "
            f"{uncovered:.1f} rps of the {mp.demand.peak_rps:.1f} rps forecast peak uncovered "
            "(spill takes it); keeping every instance",
            model=mp.name,
            forecast_upper_rps=tuple(mp.demand.upper_rps.tolist()),
        )
        result.held.add(mp.name)
    return result


def _launch(
    mp: _ModelPlan, idx: int, snapshot: FleetSnapshot, config: PlannerConfig, deferred: bool
) -> Launch:
    k, ratio, needed_from = mp.cover.launches[idx]
    offering = mp.offerings[k]
    capacity = float(mp.capacity_rps[k])
    now = snapshot.now_s
    itype = snapshot.instance_types[offering.instance_type]
    cost = itype.charge_usd(config.horizon_s, offering.price_per_hour)
    planned_before = float(
        np.maximum.reduce(mp.demand.upper_rps - mp.cover.planned_rps, initial=0.0)
    )
    per_request = (
        "to keep min_instances"
        if math.isinf(ratio)
        else f"{_per_million(ratio)} (cheapest of {len(mp.offerings)} candidates)"
    )
    when = "deferred: the next tick still makes it in time" if deferred else "launching now"
    reason = (
        f"{when}: {offering.key} at ${offering.price_per_hour:.4f}/h for {mp.name}: "
        f"forecast peak {mp.demand.peak_rps:.1f} rps over {config.horizon_s:.0f} s, needed from "
        f"+{needed_from - now:.0f} s, capacity {capacity:.1f} rps at the SLO, "
        f"{per_request}, ready after {itype.launch_overhead_s:.0f} s"
        + (
            f"; {planned_before:.1f} rps uncovered until new capacity is ready (spill)"
            if planned_before > 0
            else ""
        )
    )
    return Launch(mp.name, offering, reason, cost, capacity)


def _release(
    mp: _ModelPlan, snapshot: FleetSnapshot, config: PlannerConfig, bought: _Bought, out: _Builder
) -> None:
    now = snapshot.now_s
    kept_ids = {mp.live[k].id for k in mp.cover.kept}
    surplus = [i for i in mp.live if i.id not in kept_ids and i.state == InstanceState.RUNNING]
    if not surplus:
        return
    uncovered = float(np.max(mp.demand.upper_rps - mp.cover.planned_rps, initial=0.0))
    last = snapshot.planner_state.last_launch_s.get(mp.name)
    staying = len(mp.live) + len(mp.cover.launches)
    peak = int(np.argmax(mp.demand.upper_rps))
    for inst in surplus:
        itype = snapshot.instance_types.get(inst.offering.instance_type)
        paid_left = paid_until_s(inst, itype, now) - now if itype else 0.0
        if mp.name in bought.held or mp.name in bought.bought:
            why = "the model is launching, deferring or budget-limited this tick"
        elif uncovered > 0:
            why = f"{uncovered:.1f} rps of the forecast is uncovered without it"
        elif paid_left > config.release_window_s:
            window = config.release_window_s
            why = f"{paid_left:.0f} s of paid time left (release window {window:g} s)"
        elif last is not None and now - last < config.scale_in_hold_s:
            why = f"last launch {now - last:.0f} s ago (scale-in hold {config.scale_in_hold_s:g} s)"
        elif staying - 1 < config.min_instances:
            why = f"min_instances {config.min_instances}"
        else:
            staying -= 1
            out.retire(
                inst,
                f"not needed: the other instances cover the forecast peak "
                f"{mp.demand.peak_rps:.1f} rps for the whole {config.horizon_s:.0f} s horizon "
                f"(planned {float(mp.cover.planned_rps[peak]):.1f} rps there without it); "
                f"paid time ends in {max(paid_left, 0.0):.0f} s",
            )
            continue
        out.decide(
            ActionKind.HOLD,
            f"keeping surplus {inst.offering.key}: {why}",
            model=mp.name,
            instance_id=inst.id,
            offering_key=inst.offering.key,
        )
