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
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mark.apps.simulator.instance_queue import InstanceQueue, ServedBatch
from mark.apps.simulator.policies.base import Metrics, Policy, PolicyContext
from mark.apps.simulator.serverless_pool import ServerlessPool
from mark.apps.simulator.workload import Arrivals
from mark.core.catalog import Catalog
from mark.core.config import BatchingConfig, SpillConfig
from mark.core.types import Instance, InstanceState, Market, Model, Offering, Profile
from provisioner.policy import billing
from provisioner.policy.actions import Action, Launch, OperationKind, fleet_operations
from provisioner.policy.batching import BatchPlan
from provisioner.policy.capacity import CapacityCache
from provisioner.policy.dataplane import (
    batch_plan,
    last_kept_position,
    routing_weight,
    select_spills,
    service_rate_rps,
)
from provisioner.policy.offerings import Offerings
from provisioner.policy.routing import SmoothWeightedRoundRobin
from provisioner.policy.spill import QueueView

__all__ = ["SimSettings", "PolicyRun", "run_policy"]

_PATTERN_MIN = 256
_PATTERN_MAX = 8192
_NO_INSTANCE = QueueView()  # the queue of a model with no running instance


@dataclass(frozen=True, slots=True)
class SimSettings:
    """Knobs of one simulation run (the market's and the data plane's, not a policy's)."""

    zones: tuple[str, ...] = ("us-east-1a", "us-east-1b", "us-east-1c")
    types: tuple[str, ...] = ()
    window_s: float = 10.0
    seed: int = 0
    interruption_rate_per_hour: float = 0.02
    interruption_notice_s: float = 120.0
    batching: BatchingConfig = BatchingConfig()
    spill: SpillConfig = SpillConfig()
    serverless_concurrency: int = 1000
    serverless_keep_warm_s: float = 600.0


@dataclass
class PolicyRun:
    """What one policy did: totals for summary.json and the time series for the plots."""

    name: str
    latencies_ms: np.ndarray
    requests: int
    spilled: int
    failed: int
    instance_cost_usd: float
    serverless_cost_usd: float
    instance_hours: dict[str, float]
    series: dict[str, np.ndarray]
    type_series: dict[str, np.ndarray]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cost_usd(self) -> float:
        return self.instance_cost_usd + self.serverless_cost_usd


@dataclass
class _SimInstance:
    instance: Instance
    profile: Profile
    queue: InstanceQueue
    weight: float
    ready_s: float
    billed_from_s: float
    reclaim_s: float = math.inf
    notice_s: float = math.inf
    end_s: float | None = None  # scheduled termination (drain finished)
    price_per_hour: float = 0.0


class _Recorder:
    """Latencies of every request (ms; inf for a failed one), in chunks."""

    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []
        self.count = 0

    def add(self, latency_ms: np.ndarray) -> None:
        if latency_ms.size:
            self.chunks.append(latency_ms.astype(np.float32))
            self.count += latency_ms.size

    def all(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)


@dataclass
class _Engine:
    policy: Policy
    model: Model
    arrivals: Arrivals
    catalog: Catalog
    settings: SimSettings
    cache: CapacityCache
    pool: ServerlessPool
    rng: np.random.Generator
    recorder: _Recorder = field(default_factory=_Recorder)
    fleet: dict[str, _SimInstance] = field(default_factory=dict)
    done: list[_SimInstance] = field(default_factory=list)
    interruptions: dict[str, float] = field(default_factory=dict)
    reclaimed: dict[str, float] = field(default_factory=dict)
    spilled: int = 0
    failed: int = 0
    interrupted: int = 0
    serial: int = 0
    window_sojourn_s: float = 0.0
    pattern_cache: dict[tuple[float, ...], np.ndarray] = field(default_factory=dict)
    pattern_offset: int = 0
    threshold_cache: dict[tuple[int, float, float], float] = field(default_factory=dict)

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
        sim = _SimInstance(
            instance=inst,
            profile=profile,
            queue=InstanceQueue(profile.parallelism, profile.a_ms, profile.c_ms),
            weight=routing_weight(profile, self.model.slo, self.model.max_batch, self.cache),
            ready_s=launched + overhead,
            billed_from_s=now_s if ready_now else launched,
            price_per_hour=self.policy.price_per_hour(offering),
        )
        if offering.market == Market.SPOT and self.policy.interruptible:
            rate = self.settings.interruption_rate_per_hour
            if rate > 0:
                sim.reclaim_s = now_s + float(self.rng.exponential(3600.0 / rate))
                sim.notice_s = sim.reclaim_s - self.settings.interruption_notice_s
        self.fleet[inst.id] = sim

    def terminate(self, sim: _SimInstance, at_s: float) -> None:
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
        self.fleet.pop(inst.id, None)
        self.interruptions.pop(inst.id, None)
        self.done.append(sim)

    def drain(self, sim: _SimInstance, now_s: float) -> None:
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

    # -- data plane ----------------------------------------------------------------------------

    def plan_of(self, sim: _SimInstance, rate_rps: float) -> BatchPlan:
        return batch_plan(
            sim.profile,
            self.model.slo,
            rate_rps,
            self.model.max_batch,
            self.settings.batching.slo_budget_fraction,
            self.policy.batching,
        )

    def spill_position(self, plan: BatchPlan, servers: int) -> float:
        """Largest position ahead at which the spill rule keeps a fresh request queued
        (`last_kept_position`, cached per plan); -1 when none stays."""
        key = (servers, plan.service_ms, float(plan.size))
        found = self.threshold_cache.get(key)
        if found is None:
            queue = QueueView(0, service_rate_rps(servers, plan), plan.service_ms, 1)
            found = float(last_kept_position(queue, self.model.slo, self.settings.spill.margin_ms))
            self.threshold_cache[key] = found
        return found

    def to_pool(self, arrival_s: float, now_s: float, queue: QueueView | None) -> bool:
        """Spill one request that arrived at `arrival_s`, `queue.ahead` requests ahead of it on
        `queue`, when `select_spills` picks it (`queue` None: sent regardless)."""
        if queue is not None:
            chosen, _ = select_spills(
                (arrival_s + self.model.slo.latency_s,),
                queue,
                now_s=now_s,
                slo=self.model.slo,
                pool=self.pool.profile(now_s),
                margin_ms=self.settings.spill.margin_ms,
            )
            if not chosen:
                return False
        latency = self.pool.invoke(now_s)
        if latency is None:
            return False
        self.spilled += 1
        self.recorder.add(np.array([(now_s - arrival_s) * 1000.0 + latency]))
        return True

    def spill_drained(self, sim: _SimInstance, plan: BatchPlan, now_s: float) -> None:
        """What the front end does with a draining instance's queue (`Fleet._remove_link`):
        the requests not yet in a batch go to the pool as `select_spills` picks them over the
        queue (as "draining" while a slot is free); the rest stays and the instance serves it
        (the front end re-routes it to the other instances)."""
        waiting = sim.queue.waiting
        if not waiting:
            return
        running = sum(1 for s in self.fleet.values() if s.instance.state == InstanceState.RUNNING)
        rate_rps = service_rate_rps(sim.profile.parallelism, plan)
        queue = QueueView(0, rate_rps, plan.service_ms, running, draining=True)
        slo = self.model.slo
        chosen, _ = select_spills(
            [t + slo.latency_s for t in waiting],
            queue,
            now_s=now_s,
            slo=slo,
            pool=self.pool.profile(now_s),
            margin_ms=self.settings.spill.margin_ms,
        )
        spilled = {i for i, _ in chosen if self.to_pool(waiting[i], now_s, None)}
        if spilled:
            sim.queue.waiting = [t for i, t in enumerate(waiting) if i not in spilled]

    def serve_done(self, sim: _SimInstance, served: ServedBatch) -> None:
        if not served.arrival_s.size:
            return
        latency = served.latency_ms
        lost = served.completion_s > sim.reclaim_s
        if lost.any():
            self.failed += int(lost.sum())
            latency = np.where(lost, np.inf, latency)
        self.window_sojourn_s += float(np.sum(latency[~lost])) / 1000.0
        self.recorder.add(latency)

    def fail(self, count: int) -> None:
        if count:
            self.failed += count
            self.recorder.add(np.full(count, np.inf))

    def route(self, times: np.ndarray, t1: float, bucket_rate_rps: float, share_out: float) -> None:
        if not times.size:
            return
        if share_out > 0:
            direct = self.rng.random(times.size) < share_out
            for t in times[direct].tolist():
                if not self.to_pool(t, t, None):
                    self.fail(1)
            times = times[~direct]
        routable = [s for s in self.fleet.values() if s.instance.state == InstanceState.RUNNING]
        if not routable:
            if self.policy.spill:
                for t in times.tolist():
                    if not self.to_pool(t, t, _NO_INSTANCE):
                        self.fail(1)
            else:
                self.fail(times.size)
            return
        routable.sort(key=lambda s: s.instance.id)
        weights = tuple(round(s.weight, 6) for s in routable)
        pattern = self.pattern(weights)
        slots = pattern[(self.pattern_offset + np.arange(times.size)) % pattern.size]
        self.pattern_offset = (self.pattern_offset + times.size) % pattern.size
        total = sum(weights)
        running = len(routable)
        for index, sim in enumerate(routable):
            mine = times[slots == index]
            plan = self.plan_of(sim, bucket_rate_rps * sim.weight / total)
            if self.policy.spill:
                servers = sim.profile.parallelism
                limit = self.spill_position(plan, servers)
                rate = service_rate_rps(servers, plan)

                def gate(
                    arrival: float,
                    now: float,
                    position: int,
                    rate: float = rate,
                    plan: BatchPlan = plan,
                ) -> bool:
                    queue = QueueView(position, rate, plan.service_ms, running)
                    return self.to_pool(arrival, now, queue)

                def shed(late: list[float], now: float) -> None:
                    for arrival in late:
                        if not self.to_pool(arrival, now, None):
                            self.fail(1)

                served = sim.queue.offer(
                    mine,
                    plan,
                    t1,
                    spill_position=limit,
                    gate=gate,
                    deadline_s=self.model.slo.latency_s,
                    shed=shed,
                )
            else:
                served = sim.queue.offer(mine, plan, t1)
            self.serve_done(sim, served)

    def pattern(self, weights: tuple[float, ...]) -> np.ndarray:
        found = self.pattern_cache.get(weights)
        if found is None:
            router = SmoothWeightedRoundRobin()
            for index, weight in enumerate(weights):
                router.set(str(index), weight)
            length = int(min(_PATTERN_MAX, max(_PATTERN_MIN, 4 * sum(weights) / min(weights))))
            found = np.array([int(router.pick() or 0) for _ in range(length)], dtype=np.int64)
            self.pattern_cache[weights] = found
        return found

    # -- events --------------------------------------------------------------------------------

    def events_in(self, t0: float, t1: float) -> list[float]:
        cuts = set()
        for sim in self.fleet.values():
            for t in (sim.ready_s, sim.notice_s, sim.reclaim_s, sim.end_s):
                if t is not None and t0 < t < t1:
                    cuts.add(t)
        return sorted(cuts)

    def fire(self, now_s: float) -> None:
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

    def capacity_rps(self) -> float:
        return sum(
            s.weight for s in self.fleet.values() if s.instance.state == InstanceState.RUNNING
        )

    def charge(self, sim: _SimInstance, end_s: float) -> float:
        offering = sim.instance.offering
        start = sim.billed_from_s
        itype = self.catalog.instance_type(offering.instance_type)
        if offering.market == Market.SPOT:
            type_name, zone = offering.instance_type, offering.zone
            return billing.spot_charge_usd(
                itype, start, end_s, lambda t: self.catalog.spot_price(type_name, zone, t)
            )
        return itype.charge_usd(end_s - start, sim.price_per_hour)

    def price_now(self, sim: _SimInstance, now_s: float) -> float:
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
) -> PolicyRun:
    """Replay `arrivals` against `policy`; deterministic for a given `settings.seed`."""
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
    )
    start = arrivals.start_s
    end = start + arrivals.buckets * arrivals.bucket_s
    steps = int(round((end - start) / window))
    per_bucket = int(round(arrivals.bucket_s / window))
    # Warm start: the policy's first decision sees one bucket of history at the first bucket's
    # rate, and what it launches is already running at the start (every policy alike).
    warm_windows = per_bucket
    n_hist = warm_windows + steps
    starts = start + window * (np.arange(n_hist) - warm_windows)
    hist_arrivals = np.zeros(n_hist)
    hist_ongoing = np.zeros(n_hist)
    hist_arrivals[:warm_windows] = arrivals.counts[0] / per_bucket
    state = policy.initial_state()
    types = settings.types or tuple(model.profiles)
    types = tuple(t for t in types if t in model.profiles)
    series = {k: np.zeros(steps) for k in ("time_s", "demand_rps", "capacity_rps", "cost_usd")}
    type_series: dict[str, np.ndarray] = {}
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
            instance_types=catalog.instance_types if filled > warm_windows else instant_types,
            offerings=offerings,
            metrics=Metrics(window, starts[:filled], hist_arrivals[:filled], hist_ongoing[:filled]),
            cache=eng.cache,
            interruptions=dict(eng.interruptions),
            reclaimed=dict(eng.reclaimed),
        )

    decision = policy.decide(context(start, warm_windows), state)
    state = decision.state
    eng.apply(decision.actions, start, initial=True)
    pool.keep_warm(decision.warm_functions, start)
    share = decision.serverless_share
    next_decision = start + policy.interval_s
    for step in range(steps):
        t0 = start + step * window
        t1 = t0 + window
        if t0 >= next_decision - 1e-9 and step > 0:
            decision = policy.decide(context(t0, warm_windows + step), state)
            state = decision.state
            eng.apply(decision.actions, t0, initial=False)
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
        for s in eng.fleet.values():
            name = s.instance.offering.instance_type
            row = type_series.setdefault(name, np.zeros(steps))
            row[step] += 1
        if progress is not None:
            progress(window)
    for sim in list(eng.fleet.values()):
        eng.serve_done(sim, sim.queue.flush(eng.plan_of(sim, 0.0)))
        eng.terminate(sim, end)
    instance_cost = 0.0
    hours: dict[str, float] = {}
    for sim in eng.done:
        stop = min(sim.end_s if sim.end_s is not None else end, end)
        instance_cost += eng.charge(sim, stop)
        name = sim.instance.offering.instance_type
        hours[name] = hours.get(name, 0.0) + max(stop - sim.billed_from_s, 0.0) / 3600.0
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
        type_series=type_series,
        extra={
            "launches": eng.serial,
            "interrupted": eng.interrupted,
            "serverless_cold_starts": pool.cold_starts,
        },
    )
