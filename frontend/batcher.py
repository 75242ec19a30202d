"""Per-instance SLO-aware dynamic batching in the front end (MArk section 4, "batching";
DESIGN.md, "Batching").

Each running instance has one batcher. Requests routed to it wait in its FIFO; a batch leaves
when it is full (b rows, b from `provisioner.policy.batching.slo_batch` at the rate routed to this
instance), when its oldest request has waited the plan's timeout (what the SLO budget leaves
after T(b)), or at once when the instance has nothing in flight (work-conserving: an idle
instance never waits for a batch to fill; while it works, the next batch fills behind it; when
more than b rows wait by then, it takes up to `backlog_take` of them in one batch, by
`provisioner.policy.batching.take_batch`, the worker's rule too), and
only while fewer than `max_inflight` batches are outstanding on the instance, so the backlog
stays here, visible to spill and retry, instead of in the worker's socket. Without the idle
rule, a few closed-loop clients (fewer than b) would wait out the whole timeout on every batch:
bench/bench_batching.py measured 0.45x nginx's goodput at 4 connections that way.

The rate is an exponentially-decaying count of arrivals (time constant `window_s`): after each
arrival at t the estimate is r(t) = r(t0) * exp(-(t - t0)/window_s) + 1/window_s, which is
unbiased for a Poisson stream and decays to zero when traffic stops.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from mark.core.protocol import InferRequest, batch_key, batch_size
from provisioner.policy.batching import BatchPlan, backlog_take, take_batch

__all__ = ["QueuedRequest", "RateEstimator", "InstanceBatcher", "answer_once"]


@dataclass(eq=False, slots=True)
class QueuedRequest:
    """One client request between arrival and answer. `future` is resolved exactly once, by
    whichever path answers it (instance, serverless or a 503)."""

    model: str
    request: InferRequest
    arrival_s: float
    deadline_s: float
    future: asyncio.Future[Any]
    rows: int = field(init=False)
    key: tuple[Any, ...] | None = field(init=False)
    # When the front end stops waiting for an instance or a pool slot and answers: the SLO
    # deadline when late requests are shed (`batching.shed_late`, 429), else arrival +
    # `batching.queue_timeout_s` (503): a late answer beats none.
    give_up_s: float = math.inf
    # Set once the request was sent to the serverless pool and that failed: it is not spilled a
    # second time, and its 503 (if it comes to that) says why the pool could not answer.
    spill_error: str | None = None
    # Set once an instance answered that it does not have the model and the request was routed
    # again: it is routed again once only (frontend/fleet.py, `_model_not_served`).
    not_served_retried: bool = False

    def __post_init__(self) -> None:
        self.rows = batch_size(self.request) or 1
        self.key = batch_key(self.request)

    @property
    def done(self) -> bool:
        return self.future.done()


class RateEstimator:
    """Exponentially-decaying arrival rate (requests per second) over `window_s`."""

    def __init__(self, window_s: float) -> None:
        if not window_s > 0:
            raise ValueError("window_s must be > 0")
        self.window_s = window_s
        self._rate_rps = 0.0
        self._at_s: float | None = None

    def rate_rps(self, now_s: float) -> float:
        if self._at_s is None:
            return 0.0
        return self._rate_rps * math.exp(-max(now_s - self._at_s, 0.0) / self.window_s)

    @property
    def last_s(self) -> float | None:
        """When the last arrival was observed (None: none yet)."""
        return self._at_s

    def observe(self, now_s: float, count: int = 1) -> None:
        self._rate_rps = self.rate_rps(now_s) + count / self.window_s
        self._at_s = now_s


def _ready_rows(pending: deque[QueuedRequest], size: int) -> int:
    head = pending[0]
    if head.key is None:
        return size
    rows = 0
    for item in pending:
        if item.key == head.key:
            rows += item.rows
            if rows >= size:
                break
    return rows


class InstanceBatcher:
    """The batch former of one instance. `plan_for(rate_rps)` gives the plan at a rate,
    `dispatch(batch)` sends one batch (it must answer or re-route every request in it), and
    `expire(request)` takes a request whose `give_up_s` passed before it could be sent."""

    def __init__(
        self,
        *,
        plan_for: Callable[[float], BatchPlan],
        dispatch: Callable[[list[QueuedRequest]], Awaitable[None]],
        expire: Callable[[QueuedRequest], None],
        max_inflight: int,
        window_s: float,
        clock: Callable[[], float],
    ) -> None:
        self.plan_for = plan_for
        self._dispatch = dispatch
        self._expire = expire
        self._max_inflight = max_inflight
        self._clock = clock
        self.rate = RateEstimator(window_s)
        self.pending: deque[QueuedRequest] = deque()
        self.inflight = 0
        self.inflight_requests = 0  # sent in those batches, not answered yet
        self._wake = asyncio.Event()
        self._sends: set[asyncio.Task[None]] = set()
        # the batch loop, started by the first wake-up: a front end of a thousand models on
        # twenty instances has 20,000 batchers, most of which never see a request
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def offer(self, request: QueuedRequest, *, wake: bool = True) -> int:
        """Queue a request, in arrival order (a re-routed request is older than the tail);
        returns how many queued requests are ahead of it. With `wake=False` the batch loop is
        not told: the caller then either sends it itself (`claim`) or calls `wake()`."""
        self.rate.observe(self._clock())
        if self.pending and request.arrival_s < self.pending[-1].arrival_s:
            index = next(i for i, q in enumerate(self.pending) if q.arrival_s > request.arrival_s)
            self.pending.insert(index, request)
        else:
            index = len(self.pending)
            self.pending.append(request)
        if wake:
            self.wake()
        return index

    def wake(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._run())
        self._wake.set()

    def claim(self, request: QueuedRequest) -> list[QueuedRequest] | None:
        """`request` as a batch of one for the caller to send itself (`await send(batch)`), when
        it is alone in the queue and the batch loop would send it at once anyway (an idle
        instance, a plan that a batch of its rows already fills, or one with no time to wait,
        as for a model without a profile on this type); else None. It spares the
        hot path a wake-up of the batch loop and a task per request."""
        if (
            self.inflight >= self._max_inflight
            or len(self.pending) != 1
            or self.pending[0] is not request
        ):
            return None
        if self.inflight > 0 and request.key is not None:
            plan = self.plan()
            if request.rows < plan.size and plan.timeout_ms > 0:
                return None
        self.pending.pop()
        self.inflight += 1
        self.inflight_requests += 1
        return [request]

    def take_all(self) -> list[QueuedRequest]:
        """Every request not yet sent (the instance left or was ejected): the caller re-routes."""
        taken = [q for q in self.pending if not q.done]
        self.pending.clear()
        return taken

    def remove(self, requests: list[QueuedRequest]) -> None:
        """Take `requests` out of the queue (the spill monitor sent them to the pool)."""
        if len(requests) == 1 and self.pending and self.pending[-1] is requests[0]:
            self.pending.pop()
            return
        gone = {id(q) for q in requests}
        self.pending = deque(q for q in self.pending if id(q) not in gone)

    def plan(self) -> BatchPlan:
        return self.plan_for(self.rate.rate_rps(self._clock()))

    async def close(self) -> None:
        """Stop forming batches; batches already sent finish and answer their requests."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._sends:
            await asyncio.gather(*self._sends, return_exceptions=True)

    def _shed(self, now_s: float) -> None:
        while self.pending and (self.pending[0].done or self.pending[0].give_up_s < now_s):
            item = self.pending.popleft()
            if not item.done:
                self._expire(item)

    async def send(self, batch: list[QueuedRequest]) -> None:
        """Dispatch a batch counted in `inflight` (taken by the batch loop, or by `claim`)."""
        try:
            await self._dispatch(batch)
        finally:
            self.inflight -= 1
            self.inflight_requests -= len(batch)
            if self.pending:  # a slot for what waits; with nothing waiting, no loop wake-up
                self.wake()

    async def _run(self) -> None:
        while True:
            if not self.pending or self.inflight >= self._max_inflight:
                self._wake.clear()
                await self._wake.wait()
                continue
            now = self._clock()
            self._shed(now)
            if not self.pending:
                continue
            plan = self.plan_for(self.rate.rate_rps(now))
            leave_at = self.pending[0].arrival_s + plan.timeout_ms / 1000.0
            if (
                self.inflight == 0
                or now >= leave_at
                or _ready_rows(self.pending, plan.size) >= plan.size
            ):
                waiting = _ready_rows(self.pending, max(plan.size, plan.backlog_size))
                waited_ms = (now - self.pending[0].arrival_s) * 1000.0
                batch = take_batch(self.pending, backlog_take(plan, waiting, waited_ms))
                self.inflight += 1
                self.inflight_requests += len(batch)
                task = asyncio.create_task(self.send(batch))
                self._sends.add(task)
                task.add_done_callback(self._sends.discard)
                continue
            self._wake.clear()
            try:
                async with asyncio.timeout(leave_at - now):
                    await self._wake.wait()
            except TimeoutError:
                pass


def answer_once(request: QueuedRequest, result: object) -> bool:
    """Resolve `request` unless something already did; True when this call answered it."""
    if request.future.done():
        return False
    if isinstance(result, BaseException):
        request.future.set_exception(result)
    else:
        request.future.set_result(result)
    return True
