"""The simulator's data plane (mark/apps/simulator/engine.py): routing the arrivals of a window
over the running instances by smooth weighted round-robin, batching and queueing them per
instance, and spilling what the spill rule picks. Every rule here is the front end's
(`provisioner.policy.dataplane`, `batching`, `routing`, `spill`); this module only applies them in
virtual time, to arrays of arrival times instead of requests."""

from __future__ import annotations

import numpy as np

from mark.apps.simulator.instance_queue import ServedBatch
from mark.apps.simulator.sim_state import EngineState, SimInstance
from mark.core.types import InstanceState
from provisioner.policy.batching import BatchPlan
from provisioner.policy.dataplane import (
    batch_plan,
    last_kept_position,
    select_spills,
    service_rate_rps,
)
from provisioner.policy.routing import SmoothWeightedRoundRobin
from provisioner.policy.spill import QueueView

__all__ = ["DataPlane"]

_PATTERN_MIN = 256
_PATTERN_MAX = 8192
_NO_INSTANCE = QueueView()  # the queue of a model with no running instance


class DataPlane(EngineState):
    # -- data plane ----------------------------------------------------------------------------

    @property
    def served_max_batch(self) -> int:
        """The largest batch this policy's data plane runs: the model's, or 1 when it does not
        batch (so routing weights are the capacities the instances serve at)."""
        return self.model.max_batch if self.policy.batching else 1

    def plan_of(self, sim: SimInstance, rate_rps: float) -> BatchPlan:
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

    def spill_drained(self, sim: SimInstance, plan: BatchPlan, now_s: float) -> None:
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

    def serve_done(self, sim: SimInstance, served: ServedBatch) -> None:
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
