"""The data plane of one front-end process: per-model queues with deadlines, routing, batching,
retry, ejection and the spill seam (DESIGN.md, "The flow of data" 1-3).

A request gets a deadline (arrival + the model's SLO latency) and is routed by smooth weighted
round-robin (weights: each instance's capacity at the SLO, `frontend.links.reweigh`) to one
instance's batcher (frontend/batcher.py), which sends it in an SLO-sized batch
(frontend/dispatch.py). A call that fails (connection refused or reset, timeout, 5xx) ejects the
instance until its health check passes and re-routes every request of the batch to another
instance while the deadline allows. Every request is answered exactly once: its future is
resolved by whichever path gets there first and the others see it done.

The spill path (frontend/spill_path.py over frontend/spill_monitor.py; the rule,
`provisioner.policy.dataplane.select_spills`, is the simulator's too) watches every queued
request, at enqueue and every `spill.interval_ms`: one expected to miss its deadline on the
instances goes to the serverless pool ("deadline"), as does one of a model with no running
instance ("cold-fleet") and one queued on an instance that started draining ("draining"). A
request past saving on the instances (a retry too late for its deadline) goes to the pool when
a slot is free. A request that finds no capacity (no instance, the pool full or failing) is not
refused for its SLO: it waits, late if it must, on the instances or for one (the replacement of
a crashed instance, a launch) until `batching.queue_timeout_s` from its arrival, and only then
gets a 503 that says why (Sanic's own timeout, `server.request_timeout_s`, comes later). Load
shedding is opt-in: with `batching.shed_late` such a request is answered 429 with Retry-After
at its deadline. Each request's `give_up_s` holds which of the two applies.

Routing by residency (frontend/residency.py): a model goes only to the instances that hold it
in memory, as each instance's repository index says (read on the sync cadence; an instance
without the repository API holds its `Instance.models`). When none holds it, the instance that
can load it soonest is asked to, and the request is held until the load completes if the
expected load time and its service fit its deadline; otherwise it spills when a pool exists
(and the load goes on, for the model's next requests). Where the control loop places models
(`Instance.placed_models`), a model goes to the instances holding it where it is placed, else to
any holding it; an instance it is being drained off (`Instance.draining_models`) gets none of its
requests and no load of it while it is marked, from the first sync that reads the mark.
At most `batching.max_held_per_model` requests wait for a model's load; the next spill when a
slot is free, else get 429 with Retry-After; a failed load answers what it held 503 (or spills).
An instance whose load of a model failed backs off loading it (frontend/residency.py,
`Backoff`); while every instance backs off, the model's requests spill, else get 503 with the
last reason and Retry-After. An instance that refused the load for want of room beside the
models it protects (in active rotation, or pinned: `mark worker`'s `Mark-Refused: no-room`)
failed nothing: while every instance is full so, the model's requests wait, as many as
`batching.max_held_per_model` (beyond, 429 with Retry-After), spilling as soon as a pool slot
frees, and the load is asked for again when the first protection lapses (the instance's
Retry-After); one that waited until its `give_up_s` gets 503 (429 when late requests are shed)
with the reason and Retry-After. An instance that answers a call saying it does not have the model
(`ModelNotServed`: the residency view is up to one sync old) is not ejected: the model is marked
not resident there and the batch is routed again, once per request.

A failed call ejects the instance (`mark_instance_ejected` is 1 while it stays out): the control
plane reads that gauge and replaces an instance kept out for `control.unhealthy_replace_s`.

The fleet learns instances and models from the database (`sync_forever`), so front-end workers
never hold the cloud provider; tests may call `set_models` / `set_instances` directly. The
parts live beside it: frontend/answers.py (what a request is answered with), frontend/links.py
(route targets, plans, weights), frontend/dispatch.py (one batch to one instance),
frontend/spill_path.py (which queued requests spill, and a failed spill's way back),
frontend/model_metadata.py (the v2 metadata, an instance's or the artifact's),
frontend/residency.py (which models each instance holds, and the loads the front end asks for).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any, Protocol

import aiohttp

from frontend import metrics
from frontend.answers import Answer, Shed, Unavailable
from frontend.batcher import InstanceBatcher, QueuedRequest, answer_once
from frontend.dispatch import dispatch
from frontend.links import Link, ModelRoutes, link_plan, reachable, reweigh, serving
from frontend.model_metadata import ArtifactMetadata, artifact_metadata, fetch_metadata
from frontend.residency import (
    NO_REPOSITORY_API,
    Backoff,
    IndexRead,
    IndexUnreadable,
    LoadFailed,
    ModelLoad,
    Residency,
    read_index,
    request_load,
)
from frontend.spill_monitor import SpillMonitor
from frontend.spill_path import SpillPath
from mark.adapters.backends import BackendClient, ModelNotServed, new_session
from mark.adapters.http_pool import HttpPool
from mark.adapters.model_store import SpecObjects
from mark.adapters.repository import UnloadFailed, request_unload
from mark.core.config import BatchingConfig
from mark.core.errors import NotFound
from mark.core.protocol import InferRequest, TensorMeta
from mark.core.types import Instance, InstanceState, Model
from provisioner.policy.batching import BatchPlan
from provisioner.policy.capacity import CapacityCache
from provisioner.policy.placement_steps import LoadOption, load_target, route_targets
from provisioner.policy.spill import QueueView

__all__ = ["Fleet", "FleetSource", "Answer", "Unavailable"]

logger = logging.getLogger("mark.frontend.fleet")
_UNREAD = object()  # an instance whose index was never read (its listing stands)


class FleetSource(Protocol):
    """Where the fleet reads models and instances (`mark.adapters.db.Database` is one)."""

    async def list_models(self) -> list[Model]: ...

    async def list_instances(
        self, *, live_only: bool = True, model: str | None = None
    ) -> list[Instance]: ...


class _LinkCalls:
    """One link's batcher (made when the link is first used) and what it calls: its plan,
    its dispatch and its expiry, for the fleet's model on that instance. One object per link,
    not a closure for each call and a cell for each name they use: a thousand models on
    twenty instances are 20,000 links, and their batchers and closures were half a million
    objects for the garbage collector to walk, a second of the front end's first sync."""

    __slots__ = ("fleet", "state", "link")

    def __init__(self, fleet: Fleet, state: ModelRoutes) -> None:
        self.fleet = fleet
        self.state = state
        self.link: Link  # set once the link is made: its batcher is made first

    def batcher(self) -> InstanceBatcher:
        config = self.fleet.config
        return InstanceBatcher(
            plan_for=self.plan_for,
            dispatch=self.dispatch,
            expire=self.expire,
            max_inflight=config.max_inflight_batches,
            window_s=config.rate_window_s,
            clock=self.fleet.now_s,
        )

    def plan_for(self, rate_rps: float) -> BatchPlan:
        return link_plan(self.state, self.link, self.fleet.config, rate_rps)

    def dispatch(self, batch: list[QueuedRequest]) -> Awaitable[None]:
        fleet = self.fleet
        return dispatch(fleet.client, self.state, self.link, batch, self.failed, fleet.now_s())

    def failed(self, batch: list[QueuedRequest], exc: Exception) -> None:
        self.fleet._instance_failed(self.state, self.link, batch, exc)

    def expire(self, q: QueuedRequest) -> None:
        self.fleet._cannot_meet(q, "it waited its time out in the queue")


class Fleet:
    """Must be created inside a running event loop (it owns an aiohttp session and tasks)."""

    def __init__(
        self,
        config: BatchingConfig,
        *,
        spill: SpillMonitor | None = None,
        session: aiohttp.ClientSession | None = None,
        objects: SpecObjects | None = None,
        memory_budget_mb: float | None = None,
    ) -> None:
        """`objects` reads the artifacts that are S3 objects, for the metadata of a model no
        instance runs (boto3's own endpoint when None); `memory_budget_mb` is the workers'
        (`worker.memory_budget_bytes`): a cold model is loaded where it fits first."""
        self.config = config
        self._memory_budget_mb = memory_budget_mb
        self._objects = objects if objects is not None else SpecObjects()
        self.spill = spill
        self._loop = asyncio.get_running_loop()
        self._own_session = session is None
        self._session = session or new_session(
            pool_size=config.pool_size, timeout_s=config.worker_timeout_s
        )
        self._http = HttpPool(limit=config.pool_size, timeout_s=config.worker_timeout_s)
        # the instances' indexes, apart: a read never waits for a slot that inference holds
        self._index_http = HttpPool(limit=config.pool_size, timeout_s=config.health_interval_s)
        self.client = BackendClient(self._session, self._http)
        # Routing weights are capacities at the SLO with the budget this fleet batches with.
        self._capacity = CapacityCache(budget_fraction=config.slo_budget_fraction)
        self._models: dict[str, ModelRoutes] = {}
        self._residency = Residency(
            default_load_s=config.default_load_s,
            backoff_base_s=config.load_backoff_base_s,
            backoff_max_s=config.load_backoff_max_s,
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        # models that had requests queued since the spill watch last looked (`_queued_models`)
        self._queued: dict[ModelRoutes, None] = {}
        self._loaded_here: set[tuple[ModelRoutes, Link]] = set()  # this front end's loads
        self._listing: list[Instance] | None = None  # the last set_instances, None: relink
        self._endpoints: dict[str, str] = {}  # its reachable instances' endpoints, by id
        self._index_reads: dict[str, IndexRead] = {}  # each one's last index read (tagged)
        self._proven: set[tuple[str, str]] = set()  # (id, endpoint) that passed a first check
        self._admitting: set[str] = set()  # instances whose first health check runs
        self._joining: set[str] = set()  # instances that passed it, routed to at `_join`
        # the links ejected from each instance being probed (`_probe`), by (id, endpoint, and
        # the model for TF Serving)
        self._probed: dict[tuple[str, str, str | None], list[tuple[ModelRoutes, Link]]] = {}
        self._sync: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._flush = asyncio.create_task(self._flush_metrics())
        self._spills: SpillPath | None = None
        if spill is not None:
            spill.start()
            self._spills = SpillPath(
                spill,
                clock=self.now_s,
                spawn=self._spawn,
                route=self._route,
                serves=self._models.__contains__,
                refuse=self._refusal,
                timeout_s=config.queue_timeout_s,
            )
            self._watch = asyncio.create_task(
                self._spills.watch(self._queued_models, spill.config.interval_ms / 1e3)
            )

    # --- clock and housekeeping --------------------------------------------------------------

    def now_s(self) -> float:
        return self._loop.time()

    def _queued_models(self) -> list[ModelRoutes]:
        """The models with requests queued on an instance or waiting for one: the spill
        watch's work every `spill.interval_ms`. Only those are looked at, not every registered
        model and its every instance (a thousand models on twenty instances were 20,000 queue
        checks a hundred times a second); a model leaves the set once nothing of it waits."""
        queued = [
            state
            for state in self._queued
            if self._models.get(state.model.name) is state
            and (state.waiting or any(link.batcher.pending for link in state.links.values()))
        ]
        self._queued = dict.fromkeys(queued)
        return queued

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
        await self._index_http.close()
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
        """Ids of the instances currently taking this model's requests: those holding it in
        memory and those that would load it for them (`GET /v2/models/{m}/ready` says ready
        while there is one)."""
        state = self._models.get(name)
        if state is None:
            return []
        return [link.id for link in state.links.values() if link.up]

    async def admitted(self, timeout_s: float = 10.0) -> None:
        """Until every instance that joined has passed its first health check or left: what a
        caller that sets instances by hand (tests, benches) waits on before reading routes."""
        async with asyncio.timeout(timeout_s):
            while any(
                not link.proven and not link.closed
                for state in self._models.values()
                for link in state.links.values()
            ):
                await asyncio.sleep(0.01)

    def resident(self, name: str) -> list[str]:
        """Ids of the instances this model is routed to now: holding it, not ejected."""
        state = self._models.get(name)
        return list(state.router.weights) if state else []

    def weights(self, name: str) -> dict[str, float]:
        state = self._models.get(name)
        return state.router.weights if state else {}

    def batch_plan(self, name: str, instance_id: str, rate_rps: float | None = None) -> BatchPlan:
        """The plan the batcher of `instance_id` runs for model `name`: at the rate it sees
        now, or at `rate_rps` (raises NotFound when the instance is no route of the model)."""
        state = self._models.get(name)
        link = state.links.get(instance_id) if state is not None else None
        if link is None:
            raise NotFound(f"instance {instance_id!r} does not serve model {name!r}")
        return link.batcher.plan() if rate_rps is None else link.batcher.plan_for(rate_rps)

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
                await self.refresh_residency()
            await asyncio.sleep(interval_s)

    def set_models(self, models: Sequence[Model]) -> None:
        """Replace the set of served models; removed models answer their queued requests 503.
        A model given as the very object it holds is unchanged (the database hands back the
        same objects until the models change: a thousand comparisons saved per sync)."""
        wanted = {m.name: m for m in models}
        for name in set(self._models) - set(wanted):
            self._drop_model(name, f"model {name!r} was removed")
        for name, model in wanted.items():
            state = self._models.get(name)
            if state is None:
                self._models[name] = ModelRoutes(model)
                self._listing = None  # its links are made by the next set_instances
            elif state.model is not model and state.model != model:
                if state.model.backend != model.backend:
                    state.metadata, state.inputs, state.artifact = None, (), None
                state.model = model
                for link in state.links.values():
                    link.profile = model.profiles.get(link.instance.offering.instance_type)
                reweigh(state, self._capacity)

    def set_instances(self, instances: Sequence[Instance]) -> None:
        """Make the running instances that serve each model its route targets; instances that
        left, drain or terminate stop taking requests (their unsent requests are re-routed, or,
        from a draining instance, spilled while the pool has room). The same listing as last
        time, with no model added since, changes nothing and is skipped."""
        listing = list(instances)
        if listing == self._listing:
            return
        self._listing = listing
        self._endpoints = {
            i.id: i.endpoint for i in listing if reachable(i) and i.endpoint is not None
        }
        self._proven &= set(self._endpoints.items())  # one back after leaving: checked again
        draining = {i.id for i in listing if i.state == InstanceState.DRAINING}
        targets = serving(listing)
        for name, state in self._models.items():
            wanted = targets.get(name, {})
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
                reweigh(state, self._capacity)
            # residency of new links (the waiting requests go to them), the placement's marks
            self._apply_residency(state)

    async def refresh_residency(self) -> None:
        """Read every running instance's repository index (each within
        `batching.health_interval_s`, together) and route each model only to the instances that
        hold it (frontend/residency.py); an index that cannot be read keeps the last view. Only
        the models whose residency an index changed are routed anew, so a sync of a thousand
        models whose memory did not change costs the index reads alone."""
        instances = self._endpoints
        residency = self._residency
        residency.forget(instances)
        ids = list(instances)
        began = [residency.generation.get(i, 0) for i in ids]
        before = {i: residency.ready.get(i, _UNREAD) for i in ids}
        absent = set(residency.absent)
        timeout_s = self.config.health_interval_s
        last = self._index_reads
        reads = await asyncio.gather(
            *(read_index(self._index_http, instances[i], timeout_s, last=last.get(i)) for i in ids),
            return_exceptions=True,
        )
        self._index_reads = {i: r for i, r in last.items() if i in instances}
        for instance_id, generation, read in zip(ids, began, reads, strict=True):
            if isinstance(read, IndexUnreadable):
                logger.info("keeping the last residency of %s: %s", instance_id, read)
            elif isinstance(read, BaseException):  # never let one instance stop the sync
                logger.warning("reading the index of %s failed: %r", instance_id, read)
            elif read is None:
                self._index_reads.pop(instance_id, None)
                residency.apply(instance_id, NO_REPOSITORY_API, generation)
            else:  # an unchanged index (304) is the last read's again
                self._index_reads[instance_id] = read
                residency.apply(instance_id, read.ready, generation)
        changed = {backend for _, backend in absent - residency.absent}  # refusals read over
        whole: set[str] = set()  # instances to or from the listing's view: all their models
        for instance_id, old in before.items():
            new = residency.ready.get(instance_id, _UNREAD)
            if new == old:
                continue
            if isinstance(old, frozenset) and isinstance(new, frozenset):
                changed |= old ^ new
            else:
                whole.add(instance_id)
        for state in self._models.values():
            if state.backend_name in changed or (whole and not whole.isdisjoint(state.links)):
                self._apply_residency(state)
        self._unload_idle()

    def _apply_residency(self, state: ModelRoutes) -> None:
        """Route `state`'s model to the links that hold it (not being drained off them), those
        where it is placed first (`route_targets`), and only to those; requests waiting for an
        instance are routed again when one more could take them."""
        name = state.model.name
        before = {link.id for link in state.links.values() if link.routable or link.loadable}
        for link in state.links.values():
            link.resident = self._holds(state, link)
            link.loadable = self._loadable(state, link)
        targets = route_targets(
            {
                link.id: link.instance.placed_models is None or name in link.instance.placed_models
                for link in state.links.values()
                if link.resident and link.up
            }
        )
        for link in state.links.values():
            link.preferred = link.id in targets or not link.resident
            if link.routable:
                state.router.set(link.id, link.weight)
            else:
                state.router.remove(link.id)
        if state.waiting and any(
            (link.routable or link.loadable) and link.id not in before
            for link in state.links.values()
        ):
            self._release_waiting(state)

    def _holds(self, state: ModelRoutes, link: Link) -> bool:
        """`link`'s instance holds the model in memory (frontend/residency.py) and the model
        is not being drained off it."""
        name, instance = state.model.name, link.instance
        return (
            self._residency.holds(instance, name, state.backend_name)
            and name not in instance.draining_models
        )

    def _loadable(self, state: ModelRoutes, link: Link) -> bool:
        """`link`'s instance may be asked to load the model: up, and not an instance the model
        is being drained off, even once its index says it left: the mark stays until the
        control loop's next sync sees that, and a copy loaded meanwhile would be held but
        marked, routed to by no one (its requests waiting out their time) and unloaded again.
        A request waits for the mark to go (`_drain_blocked`), then loads it there."""
        return link.up and state.model.name not in link.instance.draining_models

    # --- links --------------------------------------------------------------------------------

    def _add_link(self, state: ModelRoutes, instance: Instance) -> None:
        calls = _LinkCalls(self, state)
        profile = state.model.profiles.get(instance.offering.instance_type)
        link = calls.link = Link(instance, calls.batcher, profile)
        link.resident = False  # until `_apply_residency`, which its caller runs
        link.proven = (instance.id, instance.endpoint) in self._proven
        state.links[instance.id] = link
        if not link.proven and instance.id not in self._admitting:
            self._admitting.add(instance.id)
            self._spawn(self._admit(instance.id))

    def _remove_link(self, state: ModelRoutes, link: Link, *, draining: bool = False) -> None:
        link.closed = True
        if link.ejected:
            metrics.child(metrics.INSTANCE_EJECTED, state.model.name, link.id).set(0)
        state.links.pop(link.id, None)
        state.router.remove(link.id)
        taken = link.take_all()
        if draining and taken:
            taken = self._spill_some(state, taken, link.queue(len(state.router), draining=True))
        for q in taken:
            self._route(q)
        if link.made is not None:
            self._spawn(link.made.close())

    def _check_health(self, state: ModelRoutes, link: Link, why: str) -> None:
        """An instance refused a call or a load in words that are no failure of its own (503
        with Retry-After: no room, loading, busy; a load it could not do), so it is not ejected
        for that; but an instance that refuses because it is failing as a whole (its runtime
        broken, a server overloaded past its readiness, a process gone for loads only) must not
        keep its place on such words: its health is checked, at most once per
        `batching.health_interval_s`, and a failed check ejects it (then it is probed, and the
        control plane replaces an instance kept out for `control.unhealthy_replace_s`)."""
        now = self.now_s()
        if link.ejected or link.closed or now - link.checked_s < self.config.health_interval_s:
            return
        link.checked_s = now

        async def check() -> None:
            if not await self._healthy(state, link):
                self._eject(state, link, f"{why}, then failed its health check")

        self._spawn(check())

    def _unload_idle(self) -> None:
        """Unload each model this front end loaded on an instance and routed nothing to there
        for `batching.unload_idle_s` (frontend/residency.py); once per idle period each."""
        idle_s = self.config.unload_idle_s
        if idle_s <= 0 or not self._loaded_here:
            return
        now = self.now_s()
        for state, link in list(self._loaded_here):
            current = self._models.get(state.model.name) is state and not link.closed
            if not current or not link.resident or link.loaded_s is None:
                link.loaded_s = None  # gone, or evicted there since: not ours to unload
                self._loaded_here.discard((state, link))
                continue
            used_s = max(link.loaded_s, link.batcher.rate.last_s or -math.inf)
            if now - used_s < idle_s or link.batcher.inflight or link.batcher.pending:
                continue
            link.loaded_s = now  # not asked again before another idle period
            self._spawn(self._unload(state, link, idle_s))

    async def _unload(self, state: ModelRoutes, link: Link, idle_s: float) -> None:
        """The idle unload; counted `ok` (also when the instance no longer had it: 404),
        `kept` (409: in use there, by another front end say) or `failed`."""
        outcome = "ok"
        try:
            await request_unload(
                self._session,
                link.endpoint,
                state.backend_name,
                self.config.worker_timeout_s,
                idle_s=idle_s,
            )
        except UnloadFailed as exc:
            outcome = {404: "ok", 409: "kept"}.get(exc.status or 0, "failed")
        metrics.child(metrics.UNLOADS, state.model.name, link.id, outcome).inc()
        if outcome != "ok" or link.closed:
            return
        logger.info(
            "unloaded %s from instance %s: idle for %g s", state.model.name, link.id, idle_s
        )
        link.loaded_s = None
        self._loaded_here.discard((state, link))
        self._residency.unloaded(link.id, state.backend_name)
        self._apply_residency(state)

    def _eject(self, state: ModelRoutes, link: Link, reason: str) -> None:
        if link.ejected or link.closed:
            return
        logger.warning("ejecting instance %s of %s: %s", link.id, state.model.name, reason)
        link.ejected = True
        metrics.child(metrics.INSTANCE_EJECTED, state.model.name, link.id).set(1)
        state.router.remove(link.id)
        self._apply_residency(state)  # another holder may take its place in the routes
        for q in link.take_all():
            self._route(q)
        # one probe per instance, for all the models ejected from it (TF Serving: per model,
        # its readiness is the model's status)
        tf = state.model.backend.protocol == "tfserving"
        key = (link.id, link.endpoint, state.backend_name if tf else None)
        probed = self._probed.get(key)
        if probed is not None:
            probed.append((state, link))
            return
        self._probed[key] = [(state, link)]
        self._spawn(self._probe(key))

    async def _healthy(self, state: ModelRoutes, link: Link) -> bool:
        """The instance's readiness (v2 `/v2/health/ready`, TF Serving's model status), within
        `batching.health_interval_s`."""
        timeout_s = self.config.health_interval_s
        if state.model.backend.protocol == "tfserving":
            return await self.client.tf_ready(link.endpoint, state.backend_name, timeout_s)
        return await self.client.ready(link.endpoint, timeout_s)

    def _rejoin(self, state: ModelRoutes, links: Sequence[Link]) -> None:
        """`links` are up (their first health check passed, or they are back from an
        ejection): routed to where they hold the model and it is placed (`_apply_residency`),
        and what waits for an instance is routed again. Links not holding the model change no
        other link's route, only that they may load the model now: the model's routes are not
        made anew (twenty instances joining a fleet of a thousand models, each holding a
        twentieth of them, were 400,000 link updates)."""
        if any(self._holds(state, link) for link in links):
            self._apply_residency(state)
        else:  # what `_apply_residency` would set; the other links are as it left them
            for link in links:
                link.resident = False
                link.loadable = self._loadable(state, link)
                link.preferred = True
                state.router.remove(link.id)
        self._release_waiting(state)

    def _links_of(self, instance_id: str) -> list[tuple[ModelRoutes, Link]]:
        """Every model's open link to the instance."""
        return [
            (state, link)
            for state in self._models.values()
            if (link := state.links.get(instance_id)) is not None and not link.closed
        ]

    def _join(self) -> None:
        """Route to the instances that passed their first check since the last call (each of
        their models, `_rejoin`), one pass for all: instances joining together (a front end's
        start) route each model anew once, not once per instance."""
        joining, self._joining = self._joining, set()
        joined: dict[ModelRoutes, list[Link]] = {}
        for instance_id in joining:
            for state, link in self._links_of(instance_id):
                link.proven = True
                if link.ejected:  # reported after the grace: it came up after all
                    link.ejected = False
                    metrics.child(metrics.INSTANCE_EJECTED, state.model.name, link.id).set(0)
                joined.setdefault(state, []).append(link)
        for state, links in joined.items():
            self._rejoin(state, links)

    async def _admit(self, instance_id: str) -> None:
        """Health-check a new instance until it passes (then each of its models is routed to
        it) or leaves: one check for the instance, not one per model (a thousand models on an
        instance were a thousand health checks at once, and the index reads behind them timed
        out). One still failing after `batching.boot_grace_s` is reported ejected, so that the
        control plane replaces an instance whose worker never came up; it is admitted if it
        ever passes."""
        grace_ends_s = self.now_s() + self.config.boot_grace_s
        try:
            while links := self._links_of(instance_id):
                if await self._healthy(*links[0]):
                    self._proven.add((instance_id, links[0][1].endpoint))
                    self._joining.add(instance_id)
                    if len(self._joining) == 1:
                        self._loop.call_soon(self._join)
                    return
                if self.now_s() >= grace_ends_s and not all(link.ejected for _, link in links):
                    logger.warning(
                        "instance %s failed its health checks for %g s after it joined "
                        "(batching.boot_grace_s)",
                        instance_id,
                        self.config.boot_grace_s,
                    )
                    for state, link in links:
                        link.ejected = True
                        metrics.child(metrics.INSTANCE_EJECTED, state.model.name, link.id).set(1)
                await asyncio.sleep(self.config.health_interval_s)
        finally:
            self._admitting.discard(instance_id)

    async def _probe(self, key: tuple[str, str, str | None]) -> None:
        """Health-check an ejected instance until it passes (then every link ejected from it
        meanwhile rejoins) or its ejected links have all left: one check per interval for the
        instance, not one per model it serves."""
        try:
            while True:
                await asyncio.sleep(self.config.health_interval_s)
                links = [(st, x) for st, x in self._probed[key] if not x.closed]
                self._probed[key] = links
                if not links:
                    return
                if await self._healthy(*links[0]):
                    break
        finally:
            links = self._probed.pop(key)  # an ejection from now on is probed anew
        for state, link in links:
            if not link.closed:
                link.ejected = False
                metrics.child(metrics.INSTANCE_EJECTED, state.model.name, link.id).set(0)
                self._rejoin(state, (link,))

    # --- requests -----------------------------------------------------------------------------

    async def infer(self, name: str, request: InferRequest) -> Answer:
        """Answer one request (raises NotFound, Unavailable or BackendRejected)."""
        state = self._models.get(name)
        if state is None:
            raise NotFound(f"unknown model {name!r}")
        now = self.now_s()
        deadline = now + state.model.slo.latency_s
        q = QueuedRequest(name, request, now, deadline, self._loop.create_future())
        q.give_up_s = deadline if self.config.shed_late else now + self.config.queue_timeout_s
        link = self._route(q, wake=False)
        if link is not None:
            batch = link.batcher.claim(q)
            if batch is None:
                link.batcher.wake()
            else:  # an idle instance: send from this task, no hand-over to the batch loop
                await link.batcher.send(batch)
        try:
            result: Answer = await q.future
        except Shed as exc:
            metrics.add(metrics.child(metrics.SHED, name, exc.cause))
            raise
        return result

    def _route(self, q: QueuedRequest, *, wake: bool = True) -> Link | None:
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
            if not self._await_load(state, q):
                self._no_instance(state, q)
            return None
        link = state.links[key]
        ahead = link.batcher.offer(q, wake=wake)
        self._queued[state] = None
        if self._spills is not None and q.spill_error is None:
            self._spills.check_one(state, link, q, ahead)
        return link

    def _await_load(self, state: ModelRoutes, q: QueuedRequest) -> bool:
        """`q`'s model is in memory on none of its instances: it is loaded on the instance
        that can load it soonest (the load in flight, else the least expected load time), and
        `q` waits for that load when the load and one request's service fit its deadline;
        else it spills when the pool has room (the load goes on for the requests after it),
        and waits otherwise (a late answer beats none). Beyond `batching.max_held_per_model`
        held requests it spills when a slot is free, else gets 429 with Retry-After (the
        expected load time left). While every instance backs off loading it, `_backing_off`
        answers it, or has it wait for room where an instance refused the model for want of
        room (`_wait_for_room`). False when no instance could load it (none, all ejected, or
        those left are having it drained off: the caller waits for one, `_apply_residency`
        routes it then)."""
        name = state.model.name
        now = self.now_s()
        load = state.loading
        if load is None:
            link = self._soonest(state, frozenset(), q.deadline_s)
            if link is None:
                return not self._drain_blocked(state) and self._backing_off(state, q)
            load = self._start_load(state, link, frozenset())
        else:
            link = state.links.get(load.instance_id)
        wait_s = load.remaining_s(now)
        profile = link.profile if link is not None else None
        service_s = profile.service_ms(1) / 1000.0 if profile is not None else 0.0
        if now + wait_s + service_s > q.deadline_s and self._spills is not None:
            if not self._spill_some(state, (q,), QueueView()):  # spilled as cold-fleet
                return True
        if state.held() >= self.config.max_held_per_model:
            self._hold_full(state, q, "loading", wait_s)
            return True
        load.held.append(q)
        metrics.add(metrics.child(metrics.HELD, name))
        return True

    def _hold_full(self, state: ModelRoutes, q: QueuedRequest, doing: str, wait_s: float) -> None:
        """`batching.max_held_per_model` requests wait for the model already: `q` spills when a
        slot is free, else gets 429 with Retry-After (`wait_s`: how long the wait is expected
        to last)."""
        if self._spills is not None and self._spills.take_late(state, q):
            return
        answer_once(
            q,
            Shed(
                f"model {state.model.name!r} is {doing} and {state.held() + len(state.waiting)} "
                f"requests wait for it already (batching.max_held_per_model), and "
                f"{self._no_spill_why(q)}",
                retry_after_s=max(1, math.ceil(wait_s)),
                cause="hold-full",
            ),
        )

    def _backing_off(self, state: ModelRoutes, q: QueuedRequest) -> bool:
        """No instance may be asked to load `q`'s model: when that is because each one up backs
        off after failed loads, `q` spills when the pool has room, else gets 503 with the last
        failure and Retry-After (when the first back-off ends); when one of them refused it for
        want of room instead (a protection there lapses in time), `q` waits for room
        (`_wait_for_room`). False when none is up."""
        now = self.now_s()
        backoffs = [
            b
            for link in state.links.values()
            if link.up
            and (b := self._residency.backoff(link.id, state.backend_name, now)) is not None
        ]  # fmt: skip
        if not backoffs:
            return False
        room = self._room_backoff(state)
        if room is not None:
            self._wait_for_room(state, q, room)
            return True
        if not self._spill_some(state, (q,), QueueView()):  # spilled as cold-fleet
            return True
        last = max(backoffs, key=lambda b: b.until_s)
        wait_s = min(b.until_s for b in backoffs) - now
        answer_once(
            q,
            Unavailable(
                f"model {q.model!r} is in memory on none of its instances, and its loads "
                f"failed on each lately (the last: {last.reason}); none is asked again for "
                f"{wait_s:.3g} s (batching.load_backoff_base_s), and {self._no_spill_why(q)}",
                retry_after_s=max(1, math.ceil(wait_s)),
            ),
        )
        return True

    def _soonest(
        self, state: ModelRoutes, tried: frozenset[str], deadline_s: float | None = None
    ) -> Link | None:
        """The instance of `state`'s model to load it on, not in `tried` nor backing off after
        a failed load of it nor draining it, by `placement_steps.load_target` (the many-model
        simulator's rule): where the placement put the model first; then where it fits in the
        workers' memory budget without evicting (a full instance evicts, or refuses when what it
        holds is in rotation: a wasted round trip and a back-off); among those, the one with the
        fewest requests queued of any model whose expected load and one service end by
        `deadline_s`, else the one with the least expected load time (the first listed among
        equals); None when none is up."""
        backend = state.backend_name
        now = self.now_s()
        name = state.model.name
        candidates = [
            x
            for x in state.links.values()
            if self._loadable(state, x) and x.id not in tried
            and self._residency.backoff(x.id, backend, now) is None
        ]  # fmt: skip

        need_mb, budget_mb = state.model.memory_mb, self._memory_budget_mb
        footprints = (
            {s.backend_name: s.model.memory_mb or 0.0 for s in self._models.values()}
            if candidates and need_mb is not None and budget_mb is not None
            else None
        )

        def room(x: Link) -> bool:
            """Unknown need or free memory (no footprint declared, no budget, no index read)
            counts as room."""
            ready = self._residency.ready.get(x.id)
            if footprints is None or budget_mb is None or need_mb is None or ready is None:
                return True
            return need_mb <= budget_mb - sum(footprints.get(n, 0.0) for n in ready)

        def option(x: Link) -> LoadOption:
            # where the placement put the model first: the control loop may be loading it there
            placed = x.instance.placed_models is None or name in x.instance.placed_models
            ready_s = now + self._residency.expected_load_s(x.id, backend)
            service_s = x.profile.service_ms(1) / 1000.0 if x.profile is not None else 0.0
            fits = deadline_s is not None and ready_s + service_s <= deadline_s
            return LoadOption(x.id, placed, ready_s, fits, self._queued_on(x.id), room(x))

        chosen = load_target(option(x) for x in candidates)
        return state.links[chosen.instance_id] if chosen is not None else None

    def _queued_on(self, instance_id: str) -> int:
        """Requests of every model queued on the instance's batchers now (its busyness)."""
        return sum(
            len(link.made.pending)
            for routes in self._models.values()
            if (link := routes.links.get(instance_id)) is not None and link.made is not None
        )

    def _start_load(self, state: ModelRoutes, link: Link, tried: frozenset[str]) -> ModelLoad:
        expected_s = self._residency.expected_load_s(link.id, state.backend_name)
        load = state.loading = ModelLoad(link.id, self.now_s(), expected_s, tried=tried)
        load.task = asyncio.ensure_future(self._load(state, link, load))
        self._tasks.add(load.task)
        load.task.add_done_callback(self._tasks.discard)
        return load

    async def _load(self, state: ModelRoutes, link: Link, load: ModelLoad) -> None:
        """Ask `link`'s instance to load the model (within `batching.queue_timeout_s`, the
        longest a request waits), then route what the load held: to the instance, now that it
        holds the model. If the load failed or was refused for want of room, the requests that
        may still wait are held for a load on the next instance not tried yet; once every
        instance was tried, they wait for room where one refused for want of it
        (`_wait_for_room`), else go to the pool when it has room, else get 503 with the last
        instance's reason."""
        name = state.model.name
        refused: LoadFailed | None = None
        try:
            await request_load(
                self._session, link.endpoint, state.backend_name, self.config.queue_timeout_s
            )
        except LoadFailed as exc:
            refused = exc
            if exc.status is None or exc.status >= 500:  # no answer, or it may be failing
                self._check_health(state, link, f"its load of {name!r} failed ({exc.reason})")
        took_s = self.now_s() - load.started_s
        if state.loading is load:
            state.loading = None
        held, load.held = load.held, []
        metrics.add(metrics.child(metrics.HELD, name), -len(held))
        outcome = "ok" if refused is None else "no-room" if refused.no_room else "failed"
        metrics.child(metrics.LOADS, name, link.id, outcome).inc()
        if refused is None:
            # the instance's time loading it is the model's: the ledger shares by busy time
            metrics.add(metrics.child(metrics.INSTANCE_BUSY, name, link.id), took_s)
            self._residency.loaded(link.id, state.backend_name, took_s)
            link.loaded_s = self.now_s()
            self._loaded_here.add((state, link))
            self._apply_residency(state)
            for q in held:
                self._route(q)
            return
        failure, now = refused.reason, self.now_s()
        if refused.no_room:  # no failure: asked again once its first protection lapses
            logger.info("instance %s has no room for %s now: %s", link.id, name, failure)
            wait_s = refused.retry_after_s or self.config.load_backoff_base_s
            self._residency.no_room(link.id, state.backend_name, failure, now + wait_s)
        else:
            logger.warning("loading %s on instance %s failed: %s", name, link.id, failure)
            self._residency.load_failed(link.id, state.backend_name, failure, now)
        retry_s = self._residency.backoffs[(link.id, state.backend_name)].until_s - now
        tried = load.tried | {link.id}
        after = self._soonest(state, tried)
        waiting = [q for q in held if not q.done and now < q.give_up_s]
        room = self._room_backoff(state)
        if after is not None and waiting:
            retry = self._start_load(state, after, tried)
            retry.held.extend(waiting)
            metrics.add(metrics.child(metrics.HELD, name), len(waiting))
            held = [q for q in held if q not in waiting]
        elif waiting and room is not None:  # every instance is full of what it protects
            for q in waiting:
                self._wait_for_room(state, q, room)
            held = [q for q in held if q not in waiting]
        elif waiting and self._drain_blocked(state):  # it may load there once it left
            for q in waiting:
                self._no_instance(state, q)
            held = [q for q in held if q not in waiting]
        for q in held:
            if q.done or (self._spills is not None and self._spills.take_late(state, q)):
                continue
            answer_once(
                q,
                Unavailable(
                    f"model {name!r} is in memory on none of its instances, and loading it on "
                    f"instance {link.id} failed: {failure}",
                    retry_after_s=max(1, math.ceil(retry_s)),
                ),
            )

    def _drain_blocked(self, state: ModelRoutes) -> bool:
        """An instance up is not asked to load the model only because the model is being
        drained off it (the control loop unloads it, and clears the mark, within
        `placement.unload_drain_s` and a sync): a request waits for it rather than fail."""
        return any(
            link.up and state.model.name in link.instance.draining_models
            for link in state.links.values()
        )

    def _no_instance(self, state: ModelRoutes, q: QueuedRequest) -> None:
        if self._spill_some(state, (q,), QueueView()):
            state.waiting.append(q)
            self._queued[state] = None
            self._loop.call_at(q.give_up_s, self._waiting_expired, state, q)

    def _wait_for_room(self, state: ModelRoutes, q: QueuedRequest, room: Backoff) -> None:
        """Every instance that may load `q`'s model refused it for want of room beside the
        models it protects, the first until `room.until_s`: `q` waits as for an instance
        (`_no_instance`: it spills once a pool slot frees, and is answered at its `give_up_s`),
        and the model's load is asked for again at `room.until_s` (`_room_may_free`). As many
        wait so as may be held for a load (`batching.max_held_per_model`); the next spill when
        a slot is free, else get 429 with Retry-After."""
        wait_s = room.until_s - self.now_s()
        if state.held() + len(state.waiting) >= self.config.max_held_per_model:
            self._hold_full(state, q, "waiting for room on its instances", wait_s)
            return
        self._no_instance(state, q)
        timer = state.room_retry
        if timer is None or timer.when() > room.until_s:
            if timer is not None:
                timer.cancel()
            state.room_retry = self._loop.call_at(room.until_s, self._room_may_free, state)

    def _room_may_free(self, state: ModelRoutes) -> None:
        """A protection that kept `state`'s model out of an instance has lapsed: what waits is
        routed again, and the first of it asks for the load (`_await_load`)."""
        state.room_retry = None
        if self._models.get(state.model.name) is state:
            self._release_waiting(state)

    def _room_backoff(self, state: ModelRoutes) -> Backoff | None:
        """Of the refusals for want of room in force on the instances that may load the model
        otherwise, the one that ends first; None when there is none."""
        now = self.now_s()
        refusals = [
            b
            for link in state.links.values()
            if self._loadable(state, link)
            and (b := self._residency.backoff(link.id, state.backend_name, now)) is not None
            and b.no_room
        ]  # fmt: skip
        return min(refusals, key=lambda b: b.until_s, default=None)

    def _waiting_expired(self, state: ModelRoutes, q: QueuedRequest) -> None:
        if q.done:
            return
        try:
            state.waiting.remove(q)
        except ValueError:
            return
        room = self._room_backoff(state)
        if room is None:
            reason = f"no running instance of model {q.model!r} could take the request"
            retry_after_s = None
        else:
            reason = (
                f"model {q.model!r} is in memory on none of its instances and none had room "
                f"for it ({room.reason})"
            )
            retry_after_s = max(1, math.ceil(room.until_s - self.now_s()))
        answer_once(
            q,
            self._refusal(
                f"{reason} within {self._patience(state)}, and {self._no_spill_why(q)}",
                retry_after_s=retry_after_s,
            ),
        )

    def _patience(self, state: ModelRoutes) -> str:
        """How long a request waits for capacity, as its refusal says it."""
        if self.config.shed_late:
            return f"its SLO of {state.model.slo.latency_ms:g} ms (batching.shed_late)"
        return f"{self.config.queue_timeout_s:g} s (batching.queue_timeout_s)"

    def _refusal(self, reason: str, *, retry_after_s: int | None = None) -> Unavailable:
        """What a request that waited as long as it may is answered: 429 with Retry-After when
        late requests are shed (`retry_after_s` when known, else `batching.shed_retry_after_s`),
        else 503 (with `retry_after_s` when known: when an instance may have room)."""
        if self.config.shed_late:
            if retry_after_s is None:
                retry_after_s = self.config.shed_retry_after_s
            return Shed(reason, retry_after_s=retry_after_s)
        return Unavailable(reason, retry_after_s=retry_after_s)

    def _no_spill_why(self, q: QueuedRequest) -> str:
        if q.spill_error is not None:
            return f"the serverless pool failed: {q.spill_error}"
        if self.spill is None:
            return "spill is off"
        return "the serverless pool has no free slot"

    def _release_waiting(self, state: ModelRoutes) -> None:
        waiting, state.waiting = state.waiting, deque()
        for q in waiting:
            self._route(q)

    def _cannot_meet(self, q: QueuedRequest, why: str) -> None:
        """`q` cannot meet its deadline on the instances: the pool if it has room (a late
        answer beats none), else back in line, on the instances or waiting for one, until its
        `give_up_s`; then 503 (or 429 when late requests are shed) with the reason."""
        if q.done:
            return
        state = self._models.get(q.model)
        if state is not None and self._spills is not None and self._spills.take_late(state, q):
            return
        if state is not None and self.now_s() < q.give_up_s:
            self._route(q)
            return
        patience = "" if state is None else f" within {self._patience(state)}"
        answer_once(
            q,
            self._refusal(f"cannot answer{patience}: {why}, and {self._no_spill_why(q)}"),
        )

    def _spill_some(
        self, state: ModelRoutes, requests: Iterable[QueuedRequest], queue: QueueView
    ) -> list[QueuedRequest]:
        """Spill those of `requests` the rule picks (none without a monitor); returns the
        others not answered yet, in order."""
        if self._spills is None:
            return [q for q in requests if not q.done]
        return self._spills.spill_some(state, requests, queue)

    def _retry(self, state: ModelRoutes, q: QueuedRequest, why: str, reason: str) -> None:
        """Route `q` again while its deadline allows (counted by `reason`)."""
        if self.now_s() + state.fastest_s() < q.deadline_s:
            metrics.child(metrics.RETRIES, q.model, reason).inc()
            self._route(q)
        else:
            self._cannot_meet(q, f"{why} and the deadline is too close to retry")

    def _instance_failed(
        self, state: ModelRoutes, link: Link, batch: list[QueuedRequest], exc: Exception
    ) -> None:
        """A call to `link` failed (refused, reset, timed out, 5xx): eject it until its health
        check passes and retry the batch's requests elsewhere while their deadlines allow. A
        ModelNotServed is no failure of the instance (`_model_not_served`)."""
        if isinstance(exc, ModelNotServed):
            self._model_not_served(state, link, batch, exc)
            return
        self._eject(state, link, str(exc))
        for q in batch:
            self._retry(state, q, f"instance {link.id} failed ({exc})", "instance-failed")

    def _model_not_served(
        self, state: ModelRoutes, link: Link, batch: list[QueuedRequest], exc: ModelNotServed
    ) -> None:
        """`link`'s instance said it does not have the model (it evicted it since the last
        index read): routing takes it as not holding the model (and, when it cannot load it
        now, backs off loading it there), and it stays in service for its other models. The
        requests queued there go elsewhere; the batch's are routed again once each, and one
        refused a second time spills when the pool has a slot, else gets 503 with the reason."""
        name, backend = state.model.name, state.backend_name
        logger.info("instance %s does not have %s now: %s", link.id, name, exc.reason)
        self._residency.refused(link.id, backend)
        if exc.retry_after_s is not None:
            self._residency.load_failed(link.id, backend, exc.reason, self.now_s())
            self._check_health(state, link, f"it answered 503 for {name!r} ({exc.reason})")
        self._apply_residency(state)
        why = f"instance {link.id} does not have model {name!r} ({exc.reason})"
        for q in batch:
            if not q.not_served_retried:
                q.not_served_retried = True
                self._retry(state, q, why, "not-resident")
            elif not q.done and (self._spills is None or not self._spills.take_late(state, q)):
                retry_s = exc.retry_after_s if exc.retry_after_s is not None else 1.0
                answer_once(q, Unavailable(why, retry_after_s=max(1, math.ceil(retry_s))))
        for q in link.take_all():
            self._route(q)

    # --- metadata -----------------------------------------------------------------------------

    async def metadata(self, name: str) -> dict[str, Any]:
        """The model's v2 metadata: as an instance reports it (cached until the backend
        changes), else as its artifact declares it (a model scaled to zero or served by the
        serverless pool alone: frontend/model_metadata.py). Raises NotFound, or Unavailable
        (503) with the reason when neither can say (an artifact missing or unreadable here)."""
        state = self._state(name)
        doc = await self._instance_metadata(state)
        if doc is not None:
            return doc
        read = await self._artifact_metadata(state)
        if read.signature is None:
            raise Unavailable(f"model {name!r}: {read.reason}")
        return read.to_json(state.backend_name)

    async def inputs(self, name: str) -> tuple[TensorMeta, ...]:
        """Declared inputs for validation: an instance's, else the artifact's; empty when
        neither is known (the instance validates)."""
        state = self._state(name)
        if await self._instance_metadata(state) is not None:
            return state.inputs
        read = await self._artifact_metadata(state)
        return read.signature.inputs if read.signature is not None else ()

    def _state(self, name: str) -> ModelRoutes:
        state = self._models.get(name)
        if state is None:
            raise NotFound(f"unknown model {name!r}")
        return state

    async def _instance_metadata(self, state: ModelRoutes) -> dict[str, Any] | None:
        """The metadata an instance reported (asked once per backend), None when none can say
        (none running, or a TF Serving backend)."""
        if state.metadata is None and state.model.backend.protocol == "kserve-v2":
            async with state.metadata_lock:
                if state.metadata is None:
                    await fetch_metadata(self.client, state)
        return state.metadata

    async def _artifact_metadata(self, state: ModelRoutes) -> ArtifactMetadata:
        async with state.metadata_lock:
            return await artifact_metadata(
                state, self.now_s(), self.config.sync_interval_s, self._objects
            )

    def _drop_model(self, name: str, reason: str) -> None:
        state = self._models.pop(name)
        for link in list(state.links.values()):
            link.closed = True
            if link.ejected:
                metrics.child(metrics.INSTANCE_EJECTED, name, link.id).set(0)
            state.router.remove(link.id)
            for q in link.take_all():
                answer_once(q, Unavailable(reason))
            if link.made is not None:
                self._spawn(link.made.close())
        for q in state.waiting:
            answer_once(q, Unavailable(reason))
        state.waiting.clear()
        if state.room_retry is not None:
            state.room_retry.cancel()
        load, state.loading = state.loading, None
        if load is not None:
            if load.task is not None:
                load.task.cancel()
            metrics.add(metrics.child(metrics.HELD, name), -len(load.held))
            for q in load.held:
                answer_once(q, Unavailable(reason))
