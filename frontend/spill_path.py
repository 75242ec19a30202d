"""The fleet's path to the serverless pool (DESIGN.md, "Spill"): which of its queued requests
go, when, and what happens when a spill fails. The rule is `provisioner.policy.dataplane.
select_spills`, through `SpillMonitor.select`, the walk the simulator runs too.

The fleet asks at three moments: when a request joins an instance's queue (`check_one`, the
rule for it alone), every `spill.interval_ms` over every queue (`watch`), and when an instance
leaves with requests still queued (`spill_some`: from a draining instance they spill as
"draining" while the pool has room; the fleet re-routes the rest). A request past saving on the
instances goes to the pool when a slot is free (`take_late`). A spill the pool throttles goes
back in line; one that fails, or that the pool has not answered by the request's queue timeout
(arrival + `batching.queue_timeout_s`: a slow pool must not hold a request past it), goes back
to queueing on the instances (or for one) while the request may still wait (`give_up_s`), else
it is answered 503 (429 when late requests are shed); a request the function rejects gets the
caller's 400.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from frontend import metrics
from frontend.answers import Answer, Unavailable
from frontend.batcher import QueuedRequest, answer_once
from frontend.links import Link, ModelRoutes
from frontend.spill_monitor import SpillMonitor
from mark.adapters.backends import BackendRejected
from provisioner.adapters.serverless import InputRejected, Throttled
from provisioner.policy.dataplane import select_spills
from provisioner.policy.spill import QueueView, SpillReason

__all__ = ["SpillPath"]

logger = logging.getLogger("mark.frontend.fleet")


class SpillPath:
    """The fleet's spills through `monitor`. `clock` is the fleet's (the event loop's),
    `spawn` runs a task the fleet awaits on close, `route` queues a request on the instances
    again, `serves(name)` says whether the fleet still serves a model, `refuse(reason)` is
    what a request that can wait no longer is answered, and `timeout_s` bounds a spill from
    the request's arrival."""

    def __init__(
        self,
        monitor: SpillMonitor,
        *,
        clock: Callable[[], float],
        spawn: Callable[[Awaitable[Any]], None],
        route: Callable[[QueuedRequest], object],
        serves: Callable[[str], bool],
        refuse: Callable[[str], Unavailable],
        timeout_s: float,
    ) -> None:
        self.monitor = monitor
        self._clock = clock
        self._spawn = spawn
        self._route = route
        self._serves = serves
        self._refuse = refuse
        self._timeout_s = timeout_s

    def check_one(self, routes: ModelRoutes, link: Link, q: QueuedRequest, ahead: int) -> None:
        """The enqueue check: the rule for `q` alone, `ahead` queued requests in front of it."""
        queue = link.queue(len(routes.router), ahead=ahead)
        if queue.service_rate_rps <= 0:
            return
        monitor = self.monitor
        chosen, _ = select_spills(
            (q.deadline_s,),
            queue,
            now_s=self._clock(),
            slo=routes.model.slo,
            pool=monitor.profile(q.model),
            margin_ms=monitor.config.margin_ms,
        )
        if chosen:
            link.batcher.remove([q])
            self.start(routes, [(q, chosen[0][1])])

    def spill_some(
        self, routes: ModelRoutes, requests: Iterable[QueuedRequest], queue: QueueView
    ) -> list[QueuedRequest]:
        """Spill those of `requests` the rule picks on `queue`; returns the others (those not
        answered yet), in order."""
        requests = [q for q in requests if not q.done]
        if not requests:
            return requests
        chosen, _ = self.monitor.select(
            requests,
            queue,
            slo=routes.model.slo,
            now_s=self._clock(),
            pool=self.monitor.profile(routes.model.name),
        )
        if not chosen:
            return requests
        self.start(routes, chosen)
        spilled = {id(q) for q, _ in chosen}
        return [q for q in requests if id(q) not in spilled]

    def take_late(self, routes: ModelRoutes, q: QueuedRequest) -> bool:
        """Send `q`, which cannot meet its deadline on the instances, to the pool when a slot
        is free (a late answer beats none) and its spill did not fail before."""
        if q.spill_error is not None or not self.monitor.can_take(q.model):
            return False
        self.start(routes, [(q, SpillReason.DEADLINE)])
        return True

    def start(
        self, routes: ModelRoutes, chosen: Sequence[tuple[QueuedRequest, SpillReason]]
    ) -> None:
        for q, reason in chosen:
            self.monitor.reserve(q.model)
            self._spawn(self._spill(routes, q, reason))

    async def _spill(self, routes: ModelRoutes, q: QueuedRequest, reason: SpillReason) -> None:
        """Answer `q` from the pool; if that fails or takes past the request's queue timeout,
        back in line while it may wait, else 503. A request still queued on an instance is
        answered by whichever path finishes first (answer_once)."""
        try:
            async with asyncio.timeout_at(q.arrival_s + self._timeout_s):
                response = await self.monitor.spill(routes.model, q, reason)
        except Throttled:  # every slot busy: back in line, it may spill when one frees up
            self._route(q)
            return
        except InputRejected as exc:  # the caller's mistake, as an instance would say (400)
            answer_once(q, BackendRejected(exc.status, exc.message))
            return
        except Exception as exc:  # the pool failed: the request still gets its one answer
            if isinstance(exc, TimeoutError):  # cancelled inside the monitor: count it here
                metrics.SPILL_FAILURES.labels(q.model, reason.value).inc()
                exc = TimeoutError(
                    f"no answer within {self._timeout_s:g} s of the request's arrival "
                    "(batching.queue_timeout_s)"
                )
            logger.info("spill of a %s request (%s) failed: %s", q.model, reason, exc)
            q.spill_error = f"{type(exc).__name__}: {exc}"
            if q.done:
                return
            if self._clock() < q.give_up_s and self._serves(q.model):
                self._route(q)
            else:
                answer_once(
                    q,
                    self._refuse(
                        f"spilled ({reason}) but the serverless pool failed: {q.spill_error}; "
                        "no time left to wait for an instance"
                    ),
                )
            return
        answer_once(q, Answer(response, "serverless"))

    async def watch(self, models: Callable[[], Iterable[ModelRoutes]], interval_s: float) -> None:
        """The periodic check: every queue of every model, at most every `interval_s`."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.check_queues(models())
            except Exception:  # never let the monitor die: the hot path depends on it
                logger.exception("the spill monitor's queue check failed")

    def check_queues(self, models: Iterable[ModelRoutes]) -> None:
        """Every instance queue of every model, and the requests waiting for a first instance,
        against the rule; the pool's slots are shared by all of them."""
        monitor = self.monitor
        now = self._clock()
        for routes in models:
            pool = monitor.profile(routes.model.name)
            if pool.free_slots <= 0 or not pool.enabled:
                continue
            running = len(routes.router)
            slo = routes.model.slo
            for link in list(routes.links.values()):
                if link.ejected or link.closed or not link.batcher.pending:
                    continue
                queue = link.queue(running)
                if queue.service_rate_rps <= 0:
                    continue
                chosen, pool = monitor.select(
                    link.batcher.pending, queue, slo=slo, now_s=now, pool=pool
                )
                if chosen:
                    link.batcher.remove([q for q, _ in chosen])
                    self.start(routes, chosen)
            if routes.waiting and running == 0:
                chosen, pool = monitor.select(
                    routes.waiting, QueueView(), slo=slo, now_s=now, pool=pool
                )
                if chosen:
                    spilled = {id(q) for q, _ in chosen}
                    routes.waiting = deque(q for q in routes.waiting if id(q) not in spilled)
                    self.start(routes, chosen)
