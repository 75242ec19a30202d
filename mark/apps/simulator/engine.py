"""The simulation engine: one policy against one workload, in virtual time.

Every `window_s` (10 s, the finest metric any policy reads) the engine
1. asks the policy for a decision when its interval comes round, and carries out its actions as
   the control loop does, by the one interpretation of `provisioner.policy.actions` (a launch is
   PENDING for the type's `launch_overhead_s`, then RUNNING; a drained instance takes no new
   requests, spills its queue as the front end does when the policy has a spill path, finishes
   the rest, and is terminated by the policy or, for policies without a drain step, once its
   queue is empty; a terminated one loses what still waits on it);
2. cuts the window at fleet events (an instance ready, an interruption notice, a reclaim) and,
   in each piece, routes the arrivals over the RUNNING instances by smooth weighted round-robin
   (`provisioner.policy.routing`), batches and queues them per instance (`instance_queue`),
   and, for policies with a spill path, sends the requests the spill walk picks to the
   serverless pool; the weights, batch plans, service rates and the walk are the front end's
   (`provisioner.policy.dataplane`);
3. records metrics (arrivals, requests in system) and the time series the plots draw.

Billing (`provisioner.policy.billing`): an instance is charged from its launch (EC2 bills boot
time) to its termination with the type's rounding (per second, 60 s minimum), at the policy's
price (SageMaker's ml.* price for the SageMaker baseline) or, for spot, the catalog spot history
integrated over its life. Instances of the warm start are billed from the start of the run. A
reclaimed spot instance fails the requests it had not finished (SkyServe leaves retries to
clients; Mark drains on the notice, so it has none in flight).

Interruptions (`SimSettings`): each spot instance's notice comes after an exponential time at its
type's rate, from its purchase; it is counted then (`interrupted`), and the cloud reclaims the
instance a notice later. `interruptions_expected` sums rate x the time each instance was exposed
(purchase to end or notice), so the count can be checked against it. The correlated event
(`pool_reclaim_at_s`) gives one whole pool its notice at once and reports its window on its own
(`pool_reclaim`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mark.apps.simulator.instance_queue import InstanceQueue
from mark.apps.simulator.policies.base import Metrics, Policy, PolicyContext
from mark.apps.simulator.serverless_pool import ServerlessPool
from mark.apps.simulator.sim_dataplane import DataPlane
from mark.apps.simulator.sim_state import (
    PEAK,
    FleetCounter,
    PolicyRun,
    PoolReclaim,
    Recorder,
    SimInstance,
    SimSettings,
)
from mark.apps.simulator.workload import Arrivals
from mark.core.catalog import Catalog
from mark.core.errors import InvalidValue
from mark.core.types import Instance, InstanceState, Market, Model, Offering
from provisioner.policy import billing
from provisioner.policy.actions import Action, Launch, OperationKind, fleet_operations
from provisioner.policy.capacity import CapacityCache
from provisioner.policy.dataplane import routing_weight
from provisioner.policy.offerings import Offerings

__all__ = ["SimSettings", "PolicyRun", "run_policy"]

_SERVING = (InstanceState.PENDING, InstanceState.RUNNING)


class _Engine(DataPlane):
    """One policy's run: the fleet's events (launches, drains, terminations, interruptions,
    billing) here, the data plane inherited from `DataPlane`, both on `EngineState`."""

    # -- fleet ---------------------------------------------------------------------------------

    def launch(self, offering: Offering, now_s: float, *, ready_now: bool = False) -> None:
        itype = self.catalog.instance_type(offering.instance_type)
        profile = self.model.profiles[offering.instance_type]
        self.serial += 1
        overhead = itype.launch_overhead_s
        launched = now_s - overhead if ready_now else now_s
        inst = Instance(
            id=f"{self.policy.name}-{self.serial:05d}",
            offering=offering,
            models=(self.model.name,),
            state=InstanceState.RUNNING if ready_now else InstanceState.PENDING,
            launched_at_s=launched,
            running_at_s=now_s if ready_now else None,
        )
        sim = SimInstance(
            instance=inst,
            profile=profile,
            queue=InstanceQueue(profile.parallelism, profile.a_ms, profile.c_ms),
            weight=routing_weight(profile, self.model.slo, self.served_max_batch, self.cache),
            ready_s=launched + overhead,
            billed_from_s=now_s if ready_now else launched,
            price_per_hour=self.policy.price_per_hour(offering),
        )
        if offering.market == Market.SPOT and self.policy.interruptible:
            rate = self.settings.interruption_rate(self.catalog, offering.instance_type)
            sim.interruption_rate_per_hour = rate
            if rate > 0:
                # The notice is the Poisson event, from the moment the instance is bought: an
                # interruption counts at its notice, so drawing the reclaim instead would add
                # a notice's length of exposure to every instance and could notice one before
                # it was launched.
                sim.notice_s = now_s + float(self.rng.exponential(3600.0 / rate))
                sim.reclaim_s = sim.notice_s + self.settings.interruption_notice_s
        self.fleet[inst.id] = sim

    def terminate(self, sim: SimInstance, at_s: float) -> None:
        """Terminate now, as the cloud does: what still waits on the instance fails (a drained
        one has none left, nor does one at the end of the run, which is flushed first)."""
        inst = sim.instance
        if inst.state == InstanceState.TERMINATED:
            return
        if sim.queue.backlog:
            self.fail(sim.queue.backlog)
            sim.queue.waiting = []
        sim.instance = inst.transition(InstanceState.TERMINATED, at_s)
        sim.end_s = at_s
        # What the interruptions counted should be: the rate over the time the instance was
        # exposed to one, from its purchase to its end or its notice (pool event included).
        exposed_s = max(min(at_s, sim.notice_s) - sim.billed_from_s, 0.0)
        self.interruptions_expected += sim.interruption_rate_per_hour * exposed_s / 3600.0
        self.fleet.pop(inst.id, None)
        self.interruptions.pop(inst.id, None)
        self.done.append(sim)

    def drain(self, sim: SimInstance, now_s: float) -> None:
        if sim.instance.state != InstanceState.RUNNING:
            return
        sim.instance = sim.instance.transition(InstanceState.DRAINING, now_s)
        plan = self.plan_of(sim, 0.0)
        if self.policy.spill:
            self.spill_drained(sim, plan, now_s)
        self.serve_done(sim, sim.queue.flush(plan))
        if not self.policy.terminates_drained:
            sim.end_s = max(now_s, sim.queue.busy_until_s())

    def apply(self, actions: tuple[Action, ...], now_s: float, *, initial: bool) -> None:
        """Carry out `actions` by `fleet_operations`, the control loop's interpretation; the
        launches of the warm start (`initial`) are ready at once."""
        fleet = {sim_id: sim.instance for sim_id, sim in self.fleet.items()}
        for op in fleet_operations(actions, fleet):
            if isinstance(op.action, Launch):
                self.launch(op.action.offering, now_s, ready_now=initial)
            elif op.instance is not None:
                sim = self.fleet[op.instance.id]
                if op.kind == OperationKind.DRAIN:
                    self.drain(sim, now_s)
                else:
                    self.terminate(sim, now_s)

    # -- events --------------------------------------------------------------------------------

    def events_in(self, t0: float, t1: float) -> list[float]:
        cuts = set()
        for sim in self.fleet.values():
            for t in (sim.ready_s, sim.notice_s, sim.reclaim_s, sim.end_s):
                if t is not None and t0 < t < t1:
                    cuts.add(t)
        event = self.pool_reclaim
        if event is not None:
            cuts.update(t for t in (event.notice_s, event.window_end_s) if t0 < t < t1)
        return sorted(cuts)

    def fire(self, now_s: float) -> None:
        event = self.pool_reclaim
        if event is not None and not event.fired and event.notice_s <= now_s + 1e-9:
            self.reclaim_pool(event, now_s)
        for sim in list(self.fleet.values()):
            inst = sim.instance
            if inst.state == InstanceState.PENDING and sim.ready_s <= now_s + 1e-9:
                sim.instance = inst.transition(InstanceState.RUNNING, now_s)
            if sim.notice_s <= now_s + 1e-9 and inst.id not in self.interruptions:
                # An interruption happens at its notice, whether or not the policy lets the
                # instance live until the reclaim (Mark drains and replaces it at once).
                self.interruptions[inst.id] = sim.reclaim_s
                self.interrupted += 1
            if sim.reclaim_s <= now_s + 1e-9:
                self.reclaimed[inst.offering.key] = now_s
                self.fail(sim.queue.backlog)
                sim.queue.waiting = []
                self.terminate(sim, now_s)
            elif sim.end_s is not None and sim.end_s <= now_s + 1e-9:
                self.terminate(sim, now_s)
        if event is not None and event.fired and event.window_end_s <= now_s + 1e-9:
            self.close_reclaim_window(event, now_s)

    def reclaim_pool(self, event: PoolReclaim, now_s: float) -> None:
        """The cloud takes back one pool whole: the pool (type, zone, market: the offering key)
        with the most spot capacity, pending and running, now; each of its live instances
        (draining ones too: the cloud does not know about drains) gets its notice now and is
        reclaimed a notice later. The fleet's event handling does the rest: it counts the
        notices, the policy sees them in its next context, and the reclaims fail what waits."""
        event.fired = True
        rec = self.recorder
        event.marks = (rec.count, self.spilled, self.failed, len(rec.chunks))
        if not self.policy.interruptible:
            return
        capacity: dict[str, float] = {}
        for sim in self.fleet.values():
            inst = sim.instance
            if inst.offering.market == Market.SPOT and inst.state in _SERVING:
                capacity[inst.offering.key] = capacity.get(inst.offering.key, 0.0) + sim.weight
        if not capacity:
            return
        event.pool = max(sorted(capacity), key=lambda key: capacity[key])
        reclaim_s = now_s + self.settings.interruption_notice_s
        for sim in self.fleet.values():
            if sim.instance.offering.key == event.pool:
                event.instances += 1
                sim.notice_s = min(sim.notice_s, now_s)
                sim.reclaim_s = min(sim.reclaim_s, reclaim_s)
                if sim.instance.id in self.interruptions:
                    self.interruptions[sim.instance.id] = sim.reclaim_s

    def close_reclaim_window(self, event: PoolReclaim, now_s: float) -> None:
        """The event's figures over its window (notice to `now_s`): the requests recorded in
        it, spilled and failed among them, and their SLO attainment."""
        if event.report is not None:
            return
        count, spilled, failed, chunks = event.marks
        rec = self.recorder
        latencies = rec.chunks[chunks:]
        within = sum(int(np.count_nonzero(c <= self.model.slo.latency_ms)) for c in latencies)
        requests = rec.count - count
        event.report = {
            "notice_s": event.notice_s,
            "reclaim_s": event.notice_s + self.settings.interruption_notice_s,
            "pool": event.pool,
            "instances_reclaimed": event.instances,
            "window_s": now_s - event.notice_s,
            "requests": requests,
            "spilled": self.spilled - spilled,
            "failed": self.failed - failed,
            "slo_attainment": within / requests if requests else 1.0,
        }

    def capacity_rps(self) -> float:
        return sum(
            s.weight for s in self.fleet.values() if s.instance.state == InstanceState.RUNNING
        )

    def charge(self, sim: SimInstance, end_s: float) -> float:
        offering = sim.instance.offering
        start = sim.billed_from_s
        itype = self.catalog.instance_type(offering.instance_type)
        if offering.market == Market.SPOT:
            type_name, zone = offering.instance_type, offering.zone
            return billing.spot_charge_usd(
                itype, start, end_s, lambda t: self.catalog.spot_price(type_name, zone, t)
            )
        return itype.charge_usd(end_s - start, sim.price_per_hour)

    def price_now(self, sim: SimInstance, now_s: float) -> float:
        """The hourly price the instance pays now (`billing.price_now`: spot at its pool's
        price in the catalog history); on-demand at the policy's price."""
        offering = sim.instance.offering
        if offering.market != Market.SPOT:
            return sim.price_per_hour
        price = self.catalog.spot_price(offering.instance_type, offering.zone, now_s)
        return billing.price_now(sim.instance, {} if price is None else {offering.key: price})


def run_policy(
    policy: Policy,
    model: Model,
    arrivals: Arrivals,
    catalog: Catalog,
    settings: SimSettings,
    *,
    serverless_latency_ms: float,
    serverless_memory_mb: int,
    progress: Callable[[float], None] | None = None,
    history: np.ndarray | None = None,
) -> PolicyRun:
    """Replay `arrivals` against `policy`; deterministic for a given `settings.seed`.
    `history`: request counts of the buckets right before the trace (what monitoring recorded
    while the system ran before the replayed window), which the first decision sees."""
    window = settings.window_s
    pool = ServerlessPool(
        pricing=catalog.lambda_pricing,
        warm_ms=serverless_latency_ms,
        memory_mb=serverless_memory_mb,
        keep_warm_s=settings.serverless_keep_warm_s,
        concurrency=settings.serverless_concurrency,
    )
    eng = _Engine(
        policy=policy,
        model=model,
        arrivals=arrivals,
        catalog=catalog,
        settings=settings,
        cache=CapacityCache(budget_fraction=settings.batching.slo_budget_fraction),
        pool=pool,
        rng=np.random.default_rng([settings.seed, 1]),
        recorder=Recorder(model.slo.latency_ms),
    )
    start = arrivals.start_s
    end = start + arrivals.buckets * arrivals.bucket_s
    notice_s = _pool_reclaim_s(settings, arrivals)
    if notice_s is not None:
        eng.pool_reclaim = PoolReclaim(notice_s, notice_s + settings.pool_reclaim_window_s)
    steps = int(round((end - start) / window))
    per_bucket = int(round(arrivals.bucket_s / window))
    # Warm start: the policy's first decision sees the history (or else one bucket at the first
    # bucket's rate), and what it launches is already running at the start (every policy alike).
    before = history if history is not None and history.size else arrivals.counts[:1]
    warm_windows = per_bucket * before.size
    n_hist = warm_windows + steps
    starts = start + window * (np.arange(n_hist) - warm_windows)
    hist_arrivals = np.zeros(n_hist)
    hist_ongoing = np.zeros(n_hist)
    hist_arrivals[:warm_windows] = np.repeat(
        np.asarray(before, dtype=np.float64) / per_bucket, per_bucket
    )
    state = policy.initial_state()
    types = settings.types or tuple(model.profiles)
    types = tuple(t for t in types if t in model.profiles)
    series = {
        k: np.zeros(steps) for k in ("time_s", "demand_rps", "capacity_rps", "cost_usd", "missed")
    }
    fleet_counter = FleetCounter(steps)
    accrued = 0.0
    next_decision = start
    bucket_times = np.zeros(0)
    bucket_index = -1

    # At the warm start launches are ready at once, so the first decision sees no launch delay.
    instant_types = {
        name: itype.model_copy(update={"launch_overhead_s": 0.0})
        for name, itype in catalog.instance_types.items()
    }

    def context(now_s: float, filled: int) -> PolicyContext:
        offerings = Offerings.of(
            catalog.offerings(settings.zones, at_s=now_s, spot=True, types=types)
        )
        return PolicyContext(
            now_s=now_s,
            model=model,
            instances=tuple(s.instance for s in eng.fleet.values()),
            instance_types=instant_types if filled <= warm_windows else catalog.instance_types,
            offerings=offerings,
            metrics=Metrics(window, starts[:filled], hist_arrivals[:filled], hist_ongoing[:filled]),
            cache=eng.cache,
            interruptions=dict(eng.interruptions),
            reclaimed=dict(eng.reclaimed),
            warm_start=filled <= warm_windows,
        )

    decision = policy.decide(context(start, warm_windows), state)
    state = decision.state
    eng.apply(decision.actions, start, initial=True)
    # the most launches one decision made, to check against the planner's per-tick cap (the
    # warm start's fleet is not a tick's launches: see PolicyContext.warm_start)
    max_tick_launches = 0
    pool.keep_warm(decision.warm_functions, start)
    share = decision.serverless_share
    next_decision = start + policy.interval_s
    for step in range(steps):
        t0 = start + step * window
        t1 = t0 + window
        if t0 >= next_decision - 1e-9 and step > 0:
            decision = policy.decide(context(t0, warm_windows + step), state)
            state = decision.state
            launched = eng.serial
            eng.apply(decision.actions, t0, initial=False)
            max_tick_launches = max(max_tick_launches, eng.serial - launched)
            pool.keep_warm(decision.warm_functions, t0)
            share = decision.serverless_share
            next_decision += policy.interval_s
        b = step // per_bucket
        if b != bucket_index:
            bucket_index = b
            bucket_times = arrivals.bucket(b)
        rate = arrivals.counts[b] / arrivals.bucket_s
        lo = int(np.searchsorted(bucket_times, t0))
        hi = int(np.searchsorted(bucket_times, t1))
        times = bucket_times[lo:hi]
        eng.window_sojourn_s = 0.0
        cuts = [t0, *eng.events_in(t0, t1), t1]
        eng.fire(t0)
        for a, z in zip(cuts, cuts[1:], strict=False):
            part = times[(times >= a) & (times < z)]
            eng.route(part, z, rate, share)
            eng.fire(z)
        hist_arrivals[warm_windows + step] = times.size
        hist_ongoing[warm_windows + step] = eng.window_sojourn_s / window
        spend = sum(eng.price_now(s, t0) for s in eng.fleet.values())
        accrued += spend * window / 3600.0
        series["time_s"][step] = t0
        series["demand_rps"][step] = times.size / window
        series["capacity_rps"][step] = eng.capacity_rps()
        series["cost_usd"][step] = accrued + pool.cost_usd
        series["missed"][step] = eng.recorder.missed  # cumulative: completions past the SLO
        fleet_counter.count(step, eng.fleet.values())
        if progress is not None:
            progress(window)
    for sim in list(eng.fleet.values()):
        eng.serve_done(sim, sim.queue.flush(eng.plan_of(sim, 0.0)))
        eng.terminate(sim, end)
    instance_cost = 0.0
    hours: dict[str, float] = {}
    spot_hours = 0.0
    for sim in eng.done:
        stop = min(sim.end_s if sim.end_s is not None else end, end)
        instance_cost += eng.charge(sim, stop)
        name = sim.instance.offering.instance_type
        life_h = max(stop - sim.billed_from_s, 0.0) / 3600.0
        hours[name] = hours.get(name, 0.0) + life_h
        if sim.instance.offering.market == Market.SPOT:
            spot_hours += life_h
    extra: dict[str, Any] = {
        "launches": eng.serial,
        "max_launches_per_tick": max_tick_launches,
        "interrupted": eng.interrupted,
        "interruptions_expected": eng.interruptions_expected,
        "spot_instance_hours": spot_hours,
        "serverless_cold_starts": pool.cold_starts,
    }
    if eng.pool_reclaim is not None:
        eng.close_reclaim_window(eng.pool_reclaim, end)
        extra["pool_reclaim"] = eng.pool_reclaim.report
    return PolicyRun(
        name=policy.name,
        latencies_ms=eng.recorder.all(),
        requests=eng.recorder.count,
        spilled=eng.spilled,
        failed=eng.failed,
        instance_cost_usd=instance_cost,
        serverless_cost_usd=pool.cost_usd,
        instance_hours=hours,
        series=series,
        type_series=fleet_counter.by_type,
        market_series=fleet_counter.by_market,
        extra=extra,
    )


def _pool_reclaim_s(settings: SimSettings, arrivals: Arrivals) -> float | None:
    """When the pool reclaim's notice comes, in the run's clock (None: no event)."""
    at = settings.pool_reclaim_at_s
    if at is None:
        return None
    if at == PEAK:
        return arrivals.start_s + int(np.argmax(arrivals.counts)) * arrivals.bucket_s
    duration_s = arrivals.buckets * arrivals.bucket_s
    if not 0.0 <= float(at) < duration_s:
        raise InvalidValue(
            "pool_reclaim_at_s", f"must fall within the trace's {duration_s:g} s, got {at!r}"
        )
    return arrivals.start_s + float(at)
