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
   eligible offerings (available in `provisioner.policy.offerings.Offerings`: listed
   available, pool not cooling down after an interruption or a capacity refusal; spot
   allowed, type allowed or a backup type) whose
   capacity at the SLO (`provisioner.policy.capacity`, cached) is positive, and, for the buckets
   before that type could be ready, the serverless pool where its latency fits the SLO
   (`FleetSnapshot.serverless`, `weigh_serverless`): a window it serves more cheaply per
   request than any stopgap is left to it (a PLAN_SPILL decision). Candidate rows are built
   once per plan, not per model (issue 6: 1,000 models x 100 offerings in under 100 ms): one
   block per model shape (profiled types and capacities), one gather for all live instances.
3. A launch that the next tick could still make in time (the bucket it is first needed in
   starts at or after now + tick + launch overhead) is deferred, not bought now.
4. Budget: launches are accepted in increasing cost per request across all models while the
   hourly price of every live instance plus the accepted launches, plus the serverless spend the
   plan expects (the greedy's planned spill at the pool's price, averaged over the horizon),
   stays within `budget_per_hour`; each model left short gets a BUDGET_LIMITED decision with
   the demand left uncovered, and keeps all its instances.
5. Release: a running instance the greedy did not need is drained only when its paid time ends
   within `release_window_s`, the running instances kept without it still serve the highest
   rate observed over `scale_in_window_s` (a drop that lasted, not one bucket's dip: on
   regime-switching traffic such a dip is often followed by the old rate, and the capacity
   released on it cannot be back before its lead time, while the spill meanwhile costs many
   times what holding it did), the model has launched nothing of its type for `scale_in_hold_s`
   nor this tick (no launch/release flapping: a stopgap is released while the efficient type
   that replaces it is still being bought), nothing is budget-limited, capped or uncovered for
   the model, and at least `min_instances` stay. Otherwise it is held, and the decision says
   why. A launch deferred to a later tick holds nothing: that tick can still make it in time.
6. With a serverless pool in the snapshot, each model gets the number of functions to keep
   warm (`provisioner.policy.prewarm`), returned in the Plan beside the actions.

The value types live in `snapshot` (what the planner reads) and `actions` (what it returns), the
candidate tables in `planner_candidates`, the money in `billing`; they are re-exported here.

Every action comes with a Decision whose reason carries the numbers (forecast, capacity, cost
per million requests).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from mark.core.config import PlannerConfig
from mark.core.types import ActionKind, Decision, Instance, InstanceState, Offering
from provisioner.policy.actions import Action, Drain, Launch, Plan, Terminate
from provisioner.policy.billing import paid_until_s, price_now
from provisioner.policy.capacity import DEFAULT_CACHE, CapacityCache
from provisioner.policy.offerings import Offerings, cooling_pools
from provisioner.policy.planner_candidates import (
    LiveRows,
    ModelInput,
    OfferingRows,
    fleet_candidates,
    offering_table,
    spot_pools,
)
from provisioner.policy.planner_greedy import (
    Candidates,
    Cover,
    Demand,
    cover_demand,
    demand_buckets,
)
from provisioner.policy.prewarm import warm_functions
from provisioner.policy.snapshot import FleetSnapshot, ModelDemand, PlannerState, ServerlessTerms

# The planner's public surface: the snapshot it reads, the plan it returns, and `plan`.
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
]


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


def plan(
    snapshot: FleetSnapshot, config: PlannerConfig, cache: CapacityCache | None = None
) -> Plan:
    """Actions for this tick and why; pure (no I/O, no clock: `snapshot.now_s` is the time)."""
    now = snapshot.now_s
    out = _Builder(now)
    state = snapshot.planner_state
    cooling = cooling_pools(state.preempted_pools, now, config.pool_cooldown_s)
    refused = cooling_pools(state.refused_pools, now, config.pool_cooldown_s)
    live_by_model: dict[str, list[Instance]] = {}
    spend_per_hour = 0.0
    offerings = Offerings.of(snapshot.offerings)
    prices = offerings.prices()
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

    offerings = offerings.avoiding(cooling.keys() | refused.keys())
    pool_of = spot_pools(offerings, snapshot.instances)
    table = offering_table(offerings, snapshot.instance_types, config, pool_of)
    offered = OfferingRows(table, len(pool_of))
    live_rows = LiveRows.of(live_by_model, now, snapshot.instance_types, pool_of, prices)
    capacities = DEFAULT_CACHE if cache is None else cache
    inputs: list[ModelInput] = []
    warm: dict[str, int] = {}
    spill_before: dict[str, int] = {}
    for name in sorted(snapshot.models):
        wanted = snapshot.models[name]
        slo, max_batch = wanted.model.slo, wanted.model.max_batch
        caps = {
            type_name: capacities.get(profile, slo, max_batch).rate_rps
            for type_name, profile in wanted.model.profiles.items()
        }
        shape = offered.shape(caps)
        lead = offered.efficient_lead_s(shape)
        mean_before = now + lead if config.tail_after_lead else -math.inf
        demand = demand_buckets(wanted.forecast, now, config.horizon_s, mean_before)
        spill_before[name] = int(np.count_nonzero(demand.starts_s < now + lead))
        inputs.append(ModelInput(name, demand, caps, offered.get(demand, shape)))
        if snapshot.serverless is not None:
            warm[name] = _warm(wanted, caps, live_by_model.get(name, ()), snapshot.serverless)
    plans: list[_ModelPlan] = []
    for item, rows in zip(inputs, fleet_candidates(inputs, live_rows), strict=True):
        name, demand, cands = item.name, item.demand, rows.cands
        live = live_rows.live(name)
        pool = snapshot.serverless
        slo_ms = snapshot.models[name].model.slo.latency_ms
        spills = pool is not None and config.weigh_serverless and pool.fits(slo_ms)
        cover = cover_demand(
            demand,
            cands,
            spot_max_share=config.spot_max_share if config.spot else 0.0,
            spot_min_pools=config.spot_min_pools,
            max_instances=config.max_instances_per_model,
            spill_usd_per_request=pool.usd_per_request if spills and pool else None,
            spill_max_rps=pool.max_rps if spills and pool else 0.0,
            spill_before=spill_before[name],
        )
        cover = _with_floor(cover, cands, len(live), config.min_instances, demand)
        plans.append(_ModelPlan(name, demand, cover, live, rows.offerings, cands.capacity_rps))

    spill_per_hour = _expected_spill_usd_per_hour(plans, snapshot)
    launched = _buy(plans, snapshot, config, spend_per_hour + spill_per_hour, out)
    for mp in plans:
        _report_spill(mp, snapshot, out)
        _report_unreachable(mp, launched, out)
        _release(mp, snapshot, config, launched, out)
    last_launch = dict(state.last_launch_s)
    for key in launched.types:
        last_launch[key] = now
    return Plan(
        actions=tuple(out.actions),
        decisions=tuple(out.decisions),
        state=PlannerState(
            last_launch_s=last_launch, preempted_pools=cooling, refused_pools=refused
        ),
        deferred=tuple(out.deferred),
        warm_functions=warm,
    )


def _warm(
    wanted: ModelDemand,
    caps: Mapping[str, float],
    live: Sequence[Instance],
    pool: ServerlessTerms,
) -> int:
    """Serverless functions to keep warm for a model: what its running instances (those with
    an interruption notice and draining ones are not in `live`) leave of the forecast's next
    bucket, at the pool's latency."""
    upper = wanted.forecast.upper_rps
    serving = sum(
        caps.get(i.offering.instance_type, 0.0) for i in live if i.state == InstanceState.RUNNING
    )
    return warm_functions(upper[0] if upper else 0.0, serving, pool.latency_ms)


def _expected_spill_usd_per_hour(plans: Sequence[_ModelPlan], snapshot: FleetSnapshot) -> float:
    """What the planned spill costs per hour at the pool's price, averaged over the horizon:
    the budget leaves room for it before it buys instances."""
    if snapshot.serverless is None:
        return 0.0
    total = 0.0
    for mp in plans:
        durations = mp.demand.durations_s
        requests = float(mp.cover.spill_rps @ durations)
        total += requests / max(float(durations.sum()), 1e-9) * 3600.0
    return total * snapshot.serverless.usd_per_request


def _report_spill(mp: _ModelPlan, snapshot: FleetSnapshot, out: _Builder) -> None:
    """Demand the greedy handed to the serverless pool because it was cheaper there than on any
    instance it could buy in time is said in the log, with the two prices."""
    spill = mp.cover.spill_rps
    if not np.count_nonzero(spill) or snapshot.serverless is None:
        return
    first = int(np.argmax(spill > 0))
    last = len(spill) - 1 - int(np.argmax(spill[::-1] > 0))
    until = mp.demand.starts_s[last] + mp.demand.durations_s[last] - mp.demand.now_s
    requests = float(spill @ mp.demand.durations_s)
    out.decide(
        ActionKind.PLAN_SPILL,
        f"spilling up to {float(spill.max()):.1f} rps (about {requests:.0f} requests) from "
        f"+{mp.demand.starts_s[first] - mp.demand.now_s:.0f} s to +{until:.0f} s to the "
        f"serverless pool at {_per_million(snapshot.serverless.usd_per_request)}: no instance "
        "that could be ready for it serves it as cheaply (stopgap boot and billing minimum, or "
        "an instance mostly idle)",
        model=mp.name,
        expected_cost_usd=requests * snapshot.serverless.usd_per_request,
        forecast_upper_rps=tuple(mp.demand.upper_rps.tolist()),
    )


def _report_unreachable(mp: _ModelPlan, bought: _Bought, out: _Builder) -> None:
    """Demand the greedy could not cover with anything (every candidate too late for it, or
    excluded by caps) is said in the log, so an operator sees why the spill path carries it."""
    if mp.name in bought.held | bought.bought | bought.deferred:
        return  # budget-limited or launching: those decisions already say what is uncovered
    gap = mp.demand.upper_rps - mp.cover.planned_rps - mp.cover.spill_rps
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
    planned = cover.planned_rps + missing * row
    spill = np.maximum(cover.spill_rps - missing * row, 0.0)
    return Cover(cover.kept, cover.launches + extra, planned, rows, spill)


@dataclass
class _Bought:
    bought: set[str] = field(default_factory=set)  # models that launched this tick
    types: set[tuple[str, str]] = field(default_factory=set)  # (model, type) launched this tick
    deferred: set[str] = field(default_factory=set)  # models with a launch left to a later tick
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
                result.deferred.add(mp.name)
                continue
            wanted.append((ratio, mp.name, idx, mp))
    wanted.sort(key=lambda w: (w[0], w[1], w[2]))
    dropped: dict[str, list[int]] = {}
    capped: dict[str, list[int]] = {}
    by_type: dict[str, int] = {}
    launches = 0
    budget = config.budget_per_hour
    for _ratio, name, idx, mp in wanted:
        offering = mp.offerings[mp.cover.launches[idx][0]]
        price = offering.price_per_hour
        if budget is not None and spend_per_hour + price > budget + 1e-9:
            dropped.setdefault(name, []).append(idx)
            continue
        of_type = by_type.get(offering.instance_type, 0)
        if (
            launches >= config.max_launches_per_tick
            or of_type >= config.max_launches_per_type_per_tick
        ):
            capped.setdefault(name, []).append(idx)
            continue
        launches += 1
        by_type[offering.instance_type] = of_type + 1
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
        result.types.add((name, offering.instance_type))
    caps = (
        f"launch caps bind (max_launches_per_tick {config.max_launches_per_tick}, "
        f"max_launches_per_type_per_tick {config.max_launches_per_type_per_tick})"
    )
    for kind, left_out, why in (
        (ActionKind.BUDGET_LIMITED, dropped, f"budget ${budget or 0:.2f}/h binds"),
        (ActionKind.LAUNCH_CAPPED, capped, caps),
    ):
        for mp in plans:
            if mp.name not in left_out:
                continue
            idxs = left_out[mp.name]
            short = mp.cover.planned_rps - mp.cover.launch_rps[idxs].sum(axis=0)
            uncovered = float(np.max(mp.demand.upper_rps - short, initial=0.0))
            price = sum(mp.offerings[mp.cover.launches[i][0]].price_per_hour for i in idxs)
            out.decide(
                kind,
                f"{why}: {len(idxs)} launch(es) (${price:.3f}/h) not made; {uncovered:.1f} rps "
                f"of the {mp.demand.peak_rps:.1f} rps forecast peak uncovered (spill takes it); "
                "keeping every instance",
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
    gap = mp.demand.upper_rps - mp.cover.planned_rps - mp.cover.spill_rps
    uncovered = float(np.max(gap, initial=0.0))
    staying = len(mp.live) + len(mp.cover.launches)
    peak = int(np.argmax(mp.demand.upper_rps))
    capacity = {inst.id: float(mp.capacity_rps[k]) for k, inst in enumerate(mp.live)}
    serving = sum(
        capacity[mp.live[k].id] for k in mp.cover.kept if mp.live[k].state == InstanceState.RUNNING
    )
    seen = snapshot.models[mp.name].forecast.observed_peak_rps or 0.0
    for inst in surplus:
        type_name = inst.offering.instance_type
        itype = snapshot.instance_types.get(type_name)
        paid_left = paid_until_s(inst, itype, now) - now if itype else 0.0
        last = snapshot.planner_state.last_launch_s.get((mp.name, type_name))
        if mp.name in bought.held:
            why = "the model is budget-limited or launch-capped this tick"
        elif (mp.name, type_name) in bought.types:
            why = f"the model is launching {type_name} this tick"
        elif uncovered > 0:
            why = f"{uncovered:.1f} rps of the forecast is uncovered without it"
        elif serving < seen:
            window = config.scale_in_window_s
            why = (
                f"the rate observed over the last {window:g} s peaked at {seen:.1f} rps and the "
                f"instances kept serve {serving:.1f} rps (scale-in window)"
            )
        elif paid_left > config.release_window_s:
            window = config.release_window_s
            why = f"{paid_left:.0f} s of paid time left (release window {window:g} s)"
        elif last is not None and now - last < config.scale_in_hold_s:
            hold = config.scale_in_hold_s
            why = f"last {type_name} launch {now - last:.0f} s ago (scale-in hold {hold:g} s)"
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
        serving += capacity[inst.id]
        out.decide(
            ActionKind.HOLD,
            f"keeping surplus {inst.offering.key}: {why}",
            model=mp.name,
            instance_id=inst.id,
            offering_key=inst.offering.key,
        )
