"""The data plane of one front-end process: per-model queues with deadlines, routing, batching,
dispatch to instances, retry, ejection and the spill seam (DESIGN.md, "The flow of data" 1-3).

A request gets a deadline (arrival + the model's SLO latency) and is routed by smooth weighted
round-robin (weights: each instance's capacity at the SLO,
`provisioner.policy.capacity.capacity_rps`)
to one instance's batcher (frontend/batcher.py), which sends it in an SLO-sized batch over the
pooled client (mark/adapters/backends.py). A call that fails (connection refused or reset, timeout,
5xx) ejects the instance until its health check passes and re-routes every request of the batch
to another instance while the deadline allows. Every request is answered exactly once: its
future is resolved by whichever path gets there first and the others see it done.

The spill monitor (frontend/spill_monitor.py, the rule in provisioner/policy/spill.py) watches
every queued
request, at enqueue and every `spill.interval_ms`: one expected to miss its deadline on the
instances goes to the serverless pool ("deadline"), as does one of a model with no running
instance ("cold-fleet") and one queued on an instance that started draining ("draining"). A
request past saving on the instances (a retry too late, its deadline passed while queued) goes to
the pool when a slot is free. A spill that fails sends the request back to the instances while
its deadline allows, else it is answered 503 with the reason; without a monitor such requests
are answered 503 at once.

The fleet learns instances and models from the database (`sync_forever`), so front-end workers
never hold the cloud provider; tests may call `set_models` / `set_instances` directly.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from statistics import fmean
from typing import Any, Protocol

import aiohttp

from frontend import metrics
from frontend.batcher import InstanceBatcher, QueuedRequest, answer_once
from frontend.spill_monitor import InstanceQueue, SpillMonitor
from mark.adapters.backends import BackendClient, BackendRejected, BackendUnavailable, new_session
from mark.adapters.http_pool import HttpPool
from mark.core.config import BatchingConfig
from mark.core.errors import NotFound
from mark.core.protocol import (
    BackendError,
    InferRequest,
    InferResponse,
    TensorMeta,
    concat,
    parse_v2_response,
    split,
)
from mark.core.types import Instance, InstanceState, Model, Profile
from provisioner.adapters.serverless import InputRejected, Throttled
from provisioner.policy.batching import BatchPlan, slo_batch
from provisioner.policy.capacity import capacity_rps
from provisioner.policy.routing import SmoothWeightedRoundRobin
from provisioner.policy.spill import SpillReason

__all__ = ["Fleet", "FleetSource", "Answer", "Unavailable"]

logger = logging.getLogger("mark.frontend.fleet")

# Weight of an instance that cannot meet the SLO even alone: it still gets a trickle, so that a
# fleet of only such instances serves rather than refusing everything.
_MIN_WEIGHT = 1e-3


class Answer:
    """A successful answer and who gave it (`instance` or `serverless`).

    A v2 request that went to an instance alone and as the client sent it (`InferRequest.raw`)
    has the instance's answer as it came (`body`, `header_length`): it is exactly what the
    client asked for, so the front end passes it back without parsing and re-encoding it
    (~15% of the front end's CPU per request); `response` parses it only when asked."""

    __slots__ = ("path", "instance_id", "body", "header_length", "_response")

    def __init__(
        self,
        response: InferResponse | None,
        path: str,
        instance_id: str | None = None,
        *,
        body: bytes | None = None,
        header_length: int | None = None,
    ) -> None:
        if response is None and body is None:
            raise ValueError("an Answer needs a response or a body")
        self._response = response
        self.path = path
        self.instance_id = instance_id
        self.body = body
        self.header_length = header_length

    @property
    def response(self) -> InferResponse:
        if self._response is None:
            assert self.body is not None
            self._response = parse_v2_response(self.body, self.header_length)
        return self._response


class Unavailable(Exception):
    """The request could not be answered within its deadline and was not spilled (503)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FleetSource(Protocol):
    """Where the fleet reads models and instances (`mark.adapters.db.Database` is one)."""

    async def list_models(self) -> list[Model]: ...

    async def list_instances(
        self, *, live_only: bool = True, model: str | None = None
    ) -> list[Instance]: ...


@dataclass(eq=False, slots=True)
class _Link:
    """One instance as one model's route target."""

    instance: Instance
    batcher: InstanceBatcher
    profile: Profile | None
    weight: float = 1.0
    ejected: bool = False
    closed: bool = False

    @property
    def id(self) -> str:
        return self.instance.id

    @property
    def endpoint(self) -> str:
        assert self.instance.endpoint is not None
        return self.instance.endpoint

    def queue(self, running_instances: int, *, draining: bool = False) -> InstanceQueue:
        """This instance's backlog for the spill rule: throughput parallelism * b / T(b) at the
        batcher's current plan (0 without a profile: no deadline estimate, nothing spills for
        the deadline until the request expires)."""
        plan = self.batcher.plan()
        rate_rps = 0.0
        if self.profile is not None and plan.service_ms > 0:
            rate_rps = self.profile.parallelism * plan.size * 1000.0 / plan.service_ms
        return InstanceQueue(
            ahead=self.batcher.inflight_requests,
            service_rate_rps=rate_rps,
            batch_service_ms=plan.service_ms,
            running_instances=running_instances,
            draining=draining,
        )


@dataclass(eq=False, slots=True)
class _ModelState:
    model: Model
    router: SmoothWeightedRoundRobin = field(default_factory=SmoothWeightedRoundRobin)
    links: dict[str, _Link] = field(default_factory=dict)
    waiting: deque[QueuedRequest] = field(default_factory=deque)
    metadata: dict[str, Any] | None = None
    inputs: tuple[TensorMeta, ...] = ()
    metadata_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def backend_name(self) -> str:
        return self.model.backend.backend_model_name or self.model.name

    def fastest_s(self) -> float:
        """The least time any routable instance needs for one request (0 without profiles)."""
        times = [
            link.profile.service_ms(1) / 1000.0
            for link in self.links.values()
            if link.profile is not None and not link.ejected
        ]
        return min(times, default=0.0)


def _serves(instance: Instance, model: str) -> bool:
    return (
        instance.state == InstanceState.RUNNING
        and instance.endpoint is not None
        and model in instance.models
    )


class Fleet:
    """Must be created inside a running event loop (it owns an aiohttp session and tasks)."""

    def __init__(
        self,
        config: BatchingConfig,
        *,
        spill: SpillMonitor | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.config = config
        self.spill = spill
        self._loop = asyncio.get_running_loop()
        self._own_session = session is None
        self._session = session or new_session(
            pool_size=config.pool_size, timeout_s=config.worker_timeout_s
        )
        self._http = HttpPool(limit=config.pool_size, timeout_s=config.worker_timeout_s)
        self.client = BackendClient(self._session, self._http)
        self._models: dict[str, _ModelState] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sync: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._flush = asyncio.create_task(self._flush_metrics())
        if spill is not None:
            spill.start()
            self._watch = asyncio.create_task(self._watch_queues(spill.config.interval_ms / 1e3))

    # --- clock and housekeeping --------------------------------------------------------------

    def now_s(self) -> float:
        return self._loop.time()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop syncing, probing and watching; answer everything still queued with 503; write
        the spilled cost still due and close the pool."""
        for task in (self._sync, self._watch, self._flush):
            if task is not None:
                task.cancel()
        for name in list(self._models):
            self._drop_model(name, "the front end is shutting down")
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self.spill is not None:
            await self.spill.close()
        await self._http.close()
        if self._own_session:
            await self._session.close()
        metrics.flush()

    async def _flush_metrics(self) -> None:
        """Write the buffered per-request metrics every FLUSH_INTERVAL_S (frontend/metrics.py)."""
        while True:
            await asyncio.sleep(metrics.FLUSH_INTERVAL_S)
            try:
                metrics.flush()
            except Exception:  # a full disk must not stop the flushes that follow
                logger.exception("writing the buffered metrics failed")

    # --- fleet view ---------------------------------------------------------------------------

    def model(self, name: str) -> Model:
        state = self._models.get(name)
        if state is None:
            raise NotFound(f"unknown model {name!r}")
        return state.model

    def models(self) -> list[Model]:
        return [s.model for s in self._models.values()]

    def routable(self, name: str) -> list[str]:
        """Ids of the instances currently taking this model's requests."""
        state = self._models.get(name)
        return list(state.router.weights) if state else []

    def weights(self, name: str) -> dict[str, float]:
        state = self._models.get(name)
        return state.router.weights if state else {}

    def start_sync(self, source: FleetSource, interval_s: float) -> None:
        """Poll `source` every `interval_s` (models first, then instances) until close()."""
        self._sync = asyncio.create_task(self.sync_forever(source, interval_s))

    async def sync_forever(self, source: FleetSource, interval_s: float) -> None:
        while True:
            try:
                models = await source.list_models()
                instances = await source.list_instances(live_only=True)
            except Exception:  # the database may be briefly unavailable; keep the last view
                logger.exception("fleet sync failed; keeping the previous view")
            else:
                self.set_models(models)
                self.set_instances(instances)
            await asyncio.sleep(interval_s)

    def set_models(self, models: Sequence[Model]) -> None:
        """Replace the set of served models; removed models answer their queued requests 503."""
        wanted = {m.name: m for m in models}
        for name in set(self._models) - set(wanted):
            self._drop_model(name, f"model {name!r} was removed")
        for name, model in wanted.items():
            state = self._models.get(name)
            if state is None:
                self._models[name] = _ModelState(model)
            elif state.model != model:
                if state.model.backend != model.backend:
                    state.metadata, state.inputs = None, ()
                state.model = model
                for link in state.links.values():
                    link.profile = model.profiles.get(link.instance.offering.instance_type)
                self._reweigh(state)

    def set_instances(self, instances: Sequence[Instance]) -> None:
        """Make the running instances that serve each model its route targets; instances that
        left, drain or terminate stop taking requests (their unsent requests are re-routed, or,
        from a draining instance, spilled while the pool has room)."""
        draining = {i.id for i in instances if i.state == InstanceState.DRAINING}
        for name, state in self._models.items():
            wanted = {i.id: i for i in instances if _serves(i, name)}
            for link_id in list(state.links):
                link = state.links[link_id]
                current = wanted.get(link_id)
                if current is None or current.endpoint != link.instance.endpoint:
                    self._remove_link(state, link, draining=link_id in draining)
                else:
                    link.instance = current
            joined = False
            for instance_id, instance in wanted.items():
                if instance_id not in state.links:
                    self._add_link(state, instance)
                    joined = True
            if joined:
                self._reweigh(state)
                self._release_waiting(state)

    # --- links --------------------------------------------------------------------------------

    def _plan_for(
        self, state: _ModelState, link_profile: Callable[[], Profile | None]
    ) -> Callable[[float], BatchPlan]:
        def plan(rate_rps: float) -> BatchPlan:
            model = state.model
            profile = link_profile()
            if not self.config.enabled:
                return BatchPlan(1, 0.0, profile.service_ms(1) if profile else 0.0)
            if profile is None:
                # No profile for this type: send whatever is waiting, as one batch, at once.
                return BatchPlan(model.max_batch, 0.0, 0.0)
            budget_ms = model.slo.latency_ms * self.config.slo_budget_fraction
            return slo_batch(profile, budget_ms, rate_rps, model.max_batch)

        return plan

    def _add_link(self, state: _ModelState, instance: Instance) -> None:
        holder: list[_Link] = []
        batcher = InstanceBatcher(
            plan_for=self._plan_for(state, lambda: holder[0].profile),
            dispatch=lambda batch: self._dispatch(state, holder[0], batch),
            expire=lambda q: self._cannot_meet(q, "its deadline passed while queued"),
            max_inflight=self.config.max_inflight_batches,
            window_s=self.config.rate_window_s,
            clock=self.now_s,
        )
        link = _Link(instance, batcher, state.model.profiles.get(instance.offering.instance_type))
        holder.append(link)
        state.links[instance.id] = link

    def _remove_link(self, state: _ModelState, link: _Link, *, draining: bool = False) -> None:
        link.closed = True
        state.links.pop(link.id, None)
        state.router.remove(link.id)
        queue = link.queue(len(state.router), draining=True) if draining else None
        taken = link.batcher.take_all()
        if queue is not None:
            taken = self._spill_some(state, taken, queue)
        for q in taken:
            self._route(q)
        self._spawn(link.batcher.close())

    def _reweigh(self, state: _ModelState) -> None:
        """Weights = capacity at the SLO; instances without a profile get the mean of the
        others (1.0 when none has one)."""
        model = state.model
        known = {
            link.id: max(capacity_rps(link.profile, model.slo, model.max_batch), _MIN_WEIGHT)
            for link in state.links.values()
            if link.profile is not None
        }
        default = fmean(known.values()) if known else 1.0
        for link in state.links.values():
            link.weight = known.get(link.id, default)
            if not link.ejected:
                state.router.set(link.id, link.weight)

    def _eject(self, state: _ModelState, link: _Link, reason: str) -> None:
        if link.ejected or link.closed:
            return
        logger.warning("ejecting instance %s of %s: %s", link.id, state.model.name, reason)
        link.ejected = True
        state.router.remove(link.id)
        for q in link.batcher.take_all():
            self._route(q)
        self._spawn(self._probe(state, link))

    async def _probe(self, state: _ModelState, link: _Link) -> None:
        """Health-check an ejected instance until it passes (then it rejoins) or leaves."""
        interval_s = self.config.health_interval_s
        while not link.closed:
            await asyncio.sleep(interval_s)
            if state.model.backend.protocol == "tfserving":
                ok = await self.client.tf_ready(link.endpoint, state.backend_name, interval_s)
            else:
                ok = await self.client.ready(link.endpoint, interval_s)
            if ok and not link.closed:
                link.ejected = False
                state.router.set(link.id, link.weight)
                self._release_waiting(state)
                return

    # --- requests -----------------------------------------------------------------------------

    async def infer(self, name: str, request: InferRequest) -> Answer:
        """Answer one request (raises NotFound, Unavailable or BackendRejected)."""
        state = self._models.get(name)
        if state is None:
            raise NotFound(f"unknown model {name!r}")
        now = self.now_s()
        q = QueuedRequest(
            name, request, now, now + state.model.slo.latency_s, self._loop.create_future()
        )
        link = self._route(q, wake=False)
        if link is not None:
            batch = link.batcher.claim(q)
            if batch is None:
                link.batcher.wake()
            else:  # an idle instance: send from this task, no hand-over to the batch loop
                await link.batcher.send(batch)
        result: Answer = await q.future
        return result

    def _route(self, q: QueuedRequest, *, wake: bool = True) -> _Link | None:
        """Queue `q` on the next instance (None when none takes it: answered, spilled or
        waiting). With `wake=False` the caller must `claim` it or wake the batcher."""
        if q.done:
            return None
        state = self._models.get(q.model)
        if state is None:
            answer_once(q, Unavailable(f"model {q.model!r} was removed"))
            return None
        key = state.router.pick()
        if key is None:
            self._no_instance(state, q)
            return None
        link = state.links[key]
        ahead = link.batcher.offer(q, wake=wake)
        if self.spill is not None and q.spill_error is None:
            self._check_one(state, link, q, ahead)
        return link

    def _check_one(self, state: _ModelState, link: _Link, q: QueuedRequest, ahead: int) -> None:
        """The enqueue check: the rule for `q` alone, `ahead` queued requests in front of it."""
        assert self.spill is not None
        queue = link.queue(len(state.router))
        if queue.service_rate_rps <= 0:
            return
        position = InstanceQueue(
            ahead=queue.ahead + ahead,
            service_rate_rps=queue.service_rate_rps,
            batch_service_ms=queue.batch_service_ms,
            running_instances=queue.running_instances,
        )
        now = self.now_s()
        chosen, _ = self.spill.select(
            (q,), position, slo=state.model.slo, now_s=now, pool=self.spill.profile(q.model)
        )
        if chosen:
            link.batcher.remove([q])
            self._start_spills(state, chosen)

    def _no_instance(self, state: _ModelState, q: QueuedRequest) -> None:
        if self._spill_some(state, (q,), InstanceQueue()):
            state.waiting.append(q)
            self._loop.call_at(q.deadline_s, self._waiting_expired, state, q)

    def _waiting_expired(self, state: _ModelState, q: QueuedRequest) -> None:
        if q.done:
            return
        try:
            state.waiting.remove(q)
        except ValueError:
            return
        answer_once(
            q,
            Unavailable(
                f"no running instance of model {q.model!r} could take the request within its "
                f"SLO of {state.model.slo.latency_ms:g} ms, and {self._no_spill_why(q)}"
            ),
        )

    def _no_spill_why(self, q: QueuedRequest) -> str:
        if q.spill_error is not None:
            return f"the serverless pool failed: {q.spill_error}"
        if self.spill is None:
            return "spill is off"
        return "the serverless pool has no free slot"

    def _release_waiting(self, state: _ModelState) -> None:
        waiting, state.waiting = state.waiting, deque()
        for q in waiting:
            self._route(q)

    def _cannot_meet(self, q: QueuedRequest, why: str) -> None:
        """`q` cannot meet its deadline on the instances: the pool if it has room (a late
        answer beats none), else 503 with the reason."""
        if q.done:
            return
        state = self._models.get(q.model)
        if (
            state is not None
            and self.spill is not None
            and q.spill_error is None
            and self.spill.can_take(q.model)
        ):
            self._start_spills(state, [(q, SpillReason.DEADLINE)])
            return
        answer_once(
            q, Unavailable(f"cannot meet the SLO deadline: {why}, and {self._no_spill_why(q)}")
        )

    # --- spill --------------------------------------------------------------------------------

    def _spill_some(
        self, state: _ModelState, requests: Iterable[QueuedRequest], queue: InstanceQueue
    ) -> list[QueuedRequest]:
        """Spill those of `requests` the rule picks; returns the others, in order."""
        requests = [q for q in requests if not q.done]
        if self.spill is None or not requests:
            return requests
        chosen, _ = self.spill.select(
            requests,
            queue,
            slo=state.model.slo,
            now_s=self.now_s(),
            pool=self.spill.profile(state.model.name),
        )
        if not chosen:
            return requests
        self._start_spills(state, chosen)
        spilled = {id(q) for q, _ in chosen}
        return [q for q in requests if id(q) not in spilled]

    def _start_spills(
        self, state: _ModelState, chosen: Sequence[tuple[QueuedRequest, SpillReason]]
    ) -> None:
        assert self.spill is not None
        for q, reason in chosen:
            self.spill.reserve(q.model)
            self._spawn(self._spill(state, q, reason))

    async def _spill(self, state: _ModelState, q: QueuedRequest, reason: SpillReason) -> None:
        """Answer `q` from the pool; if that fails, back to the instances while its deadline
        allows, else 503. A request still queued on an instance is answered by whichever path
        finishes first (answer_once)."""
        assert self.spill is not None
        try:
            response = await self.spill.spill(state.model, q, reason)
        except Throttled:  # every slot busy: back in line, it may spill when one frees up
            self._route(q)
            return
        except InputRejected as exc:  # the caller's mistake, as an instance would say (400)
            answer_once(q, BackendRejected(exc.status, exc.message))
            return
        except Exception as exc:  # the pool failed: the request still gets its one answer
            logger.info("spill of a %s request (%s) failed: %s", q.model, reason, exc)
            q.spill_error = f"{type(exc).__name__}: {exc}"
            if q.done:
                return
            if self.now_s() + state.fastest_s() < q.deadline_s and q.model in self._models:
                self._route(q)
            else:
                answer_once(
                    q,
                    Unavailable(
                        f"spilled ({reason}) but the serverless pool failed: {q.spill_error}; "
                        "the deadline is too close for the instances"
                    ),
                )
            return
        answer_once(q, Answer(response, "serverless"))

    async def _watch_queues(self, interval_s: float) -> None:
        """The periodic check: every queue of every model, at most every `interval_s`."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                self._check_queues()
            except Exception:  # never let the monitor die: the hot path depends on it
                logger.exception("the spill monitor's queue check failed")

    def _check_queues(self) -> None:
        assert self.spill is not None
        now = self.now_s()
        for state in list(self._models.values()):
            pool = self.spill.profile(state.model.name)
            if pool.free_slots <= 0 or not pool.enabled:
                continue
            running = len(state.router)
            for link in list(state.links.values()):
                if link.ejected or link.closed or not link.batcher.pending:
                    continue
                queue = link.queue(running)
                if queue.service_rate_rps <= 0:
                    continue
                chosen, pool = self.spill.select(
                    link.batcher.pending, queue, slo=state.model.slo, now_s=now, pool=pool
                )
                if chosen:
                    link.batcher.remove([q for q, _ in chosen])
                    self._start_spills(state, chosen)
            if state.waiting and running == 0:
                chosen, pool = self.spill.select(
                    state.waiting, InstanceQueue(), slo=state.model.slo, now_s=now, pool=pool
                )
                if chosen:
                    spilled = {id(q) for q, _ in chosen}
                    state.waiting = deque(q for q in state.waiting if id(q) not in spilled)
                    self._start_spills(state, chosen)

    def _retry(self, state: _ModelState, q: QueuedRequest, why: str) -> None:
        if self.now_s() + state.fastest_s() < q.deadline_s:
            metrics.child(metrics.RETRIES, q.model).inc()
            self._route(q)
        else:
            self._cannot_meet(q, f"{why} and the deadline is too close to retry")

    async def _dispatch(self, state: _ModelState, link: _Link, batch: list[QueuedRequest]) -> None:
        live = [q for q in batch if not q.done]
        if not live:
            return
        name = state.model.name
        now = self.now_s()
        queue_time = metrics.child(metrics.QUEUE_TIME, name)
        for q in live:
            q.attempts += 1
            metrics.observe(queue_time, now - q.arrival_s)
        metrics.observe(metrics.child(metrics.BATCH_SIZE, name), len(live))
        inflight = metrics.child(metrics.INSTANCE_INFLIGHT, name, link.id)
        metrics.add(inflight, len(live))
        protocol = state.model.backend.protocol
        forward = live[0].request.raw if len(live) == 1 else None
        if protocol != "kserve-v2" or state.backend_name != name:
            forward = None
        try:
            if forward is not None:
                q = live[0]
                body, header_length = await self.client.infer_v2_raw(link.endpoint, name, forward)
                answer_once(
                    q, Answer(None, "instance", link.id, body=body, header_length=header_length)
                )
                return
            response = await self.client.infer(
                link.endpoint,
                protocol,
                state.backend_name,
                concat([q.request for q in live]),
                [m.name for m in state.inputs],
            )
            parts = split(response, [q.rows for q in live])
        except BackendRejected as exc:
            if len(live) == 1:
                answer_once(live[0], exc)
            else:  # find the request at fault: each alone, on the same instance
                await asyncio.gather(*(self._dispatch(state, link, [q]) for q in live))
            return
        except (BackendUnavailable, BackendError) as exc:
            metrics.child(metrics.INSTANCE_ERRORS, name, link.id).inc()
            self._eject(state, link, str(exc))
            for q in live:
                self._retry(state, q, f"instance {link.id} failed ({exc})")
            return
        finally:
            metrics.add(inflight, -len(live))
        for q, part in zip(live, parts, strict=True):
            answer_once(
                q,
                Answer(
                    InferResponse(part.outputs, name, part.model_version, q.request.id),
                    "instance",
                    link.id,
                ),
            )

    # --- metadata -----------------------------------------------------------------------------

    async def metadata(self, name: str) -> dict[str, Any] | None:
        """The model's v2 metadata as an instance reports it (cached), None when no instance
        can say (none running, or a TF Serving backend)."""
        state = self._models.get(name)
        if state is None:
            raise NotFound(f"unknown model {name!r}")
        if state.metadata is None and state.model.backend.protocol == "kserve-v2":
            async with state.metadata_lock:
                if state.metadata is None:
                    await self._fetch_metadata(state)
        return state.metadata

    async def inputs(self, name: str) -> tuple[TensorMeta, ...]:
        """Declared inputs for validation (empty when unknown: the instance validates)."""
        await self.metadata(name)
        return self._models[name].inputs if name in self._models else ()

    async def _fetch_metadata(self, state: _ModelState) -> None:
        for link in list(state.links.values()):
            if link.ejected:
                continue
            try:
                doc = await self.client.metadata(link.endpoint, state.backend_name, 2.0)
                inputs = tuple(TensorMeta.from_json(i) for i in doc.get("inputs") or ())
            except (BackendUnavailable, KeyError, TypeError, ValueError) as exc:
                logger.info("metadata of %s from %s failed: %s", state.model.name, link.id, exc)
                continue
            state.metadata, state.inputs = doc, inputs
            return

    def _drop_model(self, name: str, reason: str) -> None:
        state = self._models.pop(name)
        for link in list(state.links.values()):
            link.closed = True
            state.router.remove(link.id)
            for q in link.batcher.take_all():
                answer_once(q, Unavailable(reason))
            self._spawn(link.batcher.close())
        for q in state.waiting:
            answer_once(q, Unavailable(reason))
        state.waiting.clear()
