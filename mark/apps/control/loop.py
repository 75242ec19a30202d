"""The control loop: observe, forecast, plan, apply, record (DESIGN.md "The flow of data", 4-5).

The loop is the edge around the pure planner. Each `tick` reads the observed request counts per
model, feeds one forecaster per model the whole buckets that ended (the bucket rule of
`provisioner.policy.snapshot`), builds the snapshot with `build_snapshot`, calls
`provisioner.policy.planner.plan`, carries out its actions as `provisioner.policy.actions`
interprets them through the `CloudProvider`, and keeps the serverless pool as warm as the plan
says; it persists every decision, every instance transition and the cost ledger
(`provisioner.policy.billing`). `sync` (run more often) makes the database agree with the cloud
(`provisioner.policy.reconcile`). Failure rules:
- a planning error never stops serving: it is logged as an ERROR decision and the tick ends;
- an apply error is retried by the provider (`RetryingCloud`, `control.apply_retries`), then
  logged and recorded; a launch the cloud refuses for capacity is recorded in the planner state
  (the pool cools down for `pool_cooldown_s`) and the loop re-plans at once, so the planner
  falls back to the next pool, a backup type or on-demand;
- a failed warm-up ping is logged and never fails the tick;
- a launched instance is saved as soon as the provider returns it; if the process dies before
  that, reconciliation finds it by its ownership tag;
- a launch or termination the cloud carried out but the database did not take (unreachable) is
  kept in memory and written by the next sync before it reconciles, so the launch is adopted,
  not terminated as untracked and bought again, and the termination is not counted as live
  capacity for `control.reconcile_grace_s` (at most one tick's operations: a tick needs the
  database before it acts);
- an on-demand instance the cloud reports gone with no warning left (a crashed local worker,
  an EC2 instance terminated by hand) and no longer lists is recorded terminated at once, without
  reconciliation's grace (which covers a listing that lags a launch, not positive news), and
  the loop re-plans: the planner replaces it (`planner.min_instances` keeps a floor);
- an instance the front ends keep ejected (`ejected`: failed calls, then failed health checks)
  for `control.unhealthy_replace_s` is terminated and the loop re-plans, as an auto-scaling
  group replaces an instance that fails its load balancer's health checks (a hung worker
  whose process lives on is found this way only).

Models that share instances (a many-model fleet: `placement_applier.shares_instances`) are
placed by mark/apps/control/placement_applier.py after the planner's actions, each tick, and
its moves go on at each sync; the planner sees neither them nor their instances, except those
draining or with an interruption notice, which it drains and terminates as any other. An error
there is logged and recorded like a planning error: it never stops the rest of the tick.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from mark.adapters.db import Database, Fence
from mark.apps.control import charging, metrics
from mark.apps.control.placement_applier import PlacementApplier, shares_instances
from mark.core.catalog import load_catalog
from mark.core.config import Config
from mark.core.errors import CloudError, Fenced, InsufficientCapacity, InvalidValue, MarkError
from mark.core.types import (
    ActionKind,
    Decision,
    Forecast,
    Instance,
    InstanceState,
    InstanceType,
    Market,
    Model,
)
from predictors.base import Forecaster
from predictors.registry import create_forecaster
from provisioner.adapters.cloud import CloudProvider, InterruptionNotice
from provisioner.adapters.serverless import ServerlessPool
from provisioner.policy.actions import Launch, OperationKind, Plan, fleet_operations
from provisioner.policy.capacity import CapacityCache
from provisioner.policy.offerings import Offerings
from provisioner.policy.planner import plan
from provisioner.policy.reconcile import ReconcileKind, reconcile
from provisioner.policy.snapshot import (
    PlannerState,
    ServerlessTerms,
    build_snapshot,
    covered_quantile,
    forecast_buckets,
    whole_buckets,
)
from traces import Trace, read_trace

__all__ = ["ControlLoop", "Schedule"]

T = TypeVar("T")

logger = logging.getLogger("mark.apps.control")

_MAX_REPLANS = 5
_REFIT_SPREAD_BUCKETS = 60


async def _done(call: Awaitable[None]) -> bool:
    """True once `call` finished: lets a None-returning call go through `_recorded`."""
    await call
    return True


@dataclass(frozen=True, slots=True)
class Schedule:
    """Known future demand (events, campaigns, batch jobs) from a trace file whose timestamps are
    epoch seconds: the loop provisions for max(forecast, schedule) so a step the operator knows
    about is bought ahead of time, as a forecast that sees it would."""

    trace: Trace

    @classmethod
    def load(cls, path: str) -> Schedule:
        return cls(read_trace(path))

    def rates(self, model: str, start_s: float, bucket_s: float, buckets: int) -> np.ndarray:
        t = self.trace
        mask = np.ones(len(t.timestamps_s), dtype=bool)
        if t.models is not None:
            mask = np.array([m == model for m in t.models])
        times = t.timestamps_s[mask]
        rates = t.counts[mask] / t.bucket_s
        out = np.zeros(buckets)
        for k in range(buckets):
            lo, hi = start_s + k * bucket_s, start_s + (k + 1) * bucket_s
            sel = (times + t.bucket_s > lo) & (times < hi)
            if sel.any():
                out[k] = float(rates[sel].max())
        return out


@dataclass
class ControlLoop:
    db: Database
    cloud: CloudProvider
    config: Config
    counts: Callable[[], Mapping[str, float]]
    """Cumulative requests observed per model (the front ends' counters)."""
    schedule: Schedule | None = None
    clock: Callable[[], float] = time.time
    serverless: ServerlessPool | None = None
    """Warmed each tick with the plan's `warm_functions`; None: no pool to warm."""
    ejected: Callable[[], Collection[str]] = tuple
    """Ids of the instances the front ends keep out of rotation now (failed health checks)."""
    busy: Callable[[], Mapping[tuple[str, str], float]] = dict
    """Cumulative seconds this host's front ends had batches in service, per (instance id,
    model): the ledger shares each instance's charge among its models by them."""
    state: PlannerState = field(default_factory=PlannerState)
    forecasters: dict[str, Forecaster] = field(default_factory=dict)
    interruptions: dict[str, float] = field(default_factory=dict)
    cache: CapacityCache = field(default_factory=CapacityCache)
    last_plan: Plan | None = None
    _last_counts: dict[str, float] = field(default_factory=dict)
    _stamps: dict[str, float] = field(default_factory=dict)
    _last_tick_s: float | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _types: dict[str, InstanceType] = field(default_factory=dict)
    _prices: dict[str, float] = field(default_factory=dict)  # by pool, as of the last tick
    _artifacts: dict[str, str] = field(default_factory=dict)  # by model, as of the last tick
    _unhealthy_since: dict[str, float] = field(default_factory=dict)  # by instance id
    holder: str | None = None
    """This control plane's name in the database lease (`control.leader_election`); None: the
    only one, no lease."""
    fence: Fence | None = None  # the lease's term while this process holds it
    _published: dict[str, float] = field(default_factory=dict)  # own counts already shared
    _published_busy: dict[tuple[str, str], float] = field(default_factory=dict)  # likewise
    _unsaved: dict[str, Instance] = field(default_factory=dict)  # applied, not yet recorded
    placement: PlacementApplier = field(init=False)
    """The many-model fleet's placement (mark/apps/control/placement_applier.py)."""

    def __post_init__(self) -> None:
        self.placement = PlacementApplier(
            self.db,
            self.config,
            self.cache,
            apply=self._apply,
            planner_state=lambda: self.state,
            fence=lambda: self.fence,
        )

    @property
    def bucket_s(self) -> float:
        """The forecasters' bucket (`forecast.bucket_s`; see `provisioner.policy.snapshot`)."""
        return self.config.forecast.bucket_s

    # -- observing and forecasting --------------------------------------------------------

    async def lead(self, now_s: float) -> bool:
        """Take or renew the control lease (a single process always leads). Every control
        plane first adds its own front ends' new requests to the shared counts, so that the
        leader forecasts the sum over hosts (and their busy time, for the ledger)."""
        await self._publish_busy()
        if self.holder is None:
            return True
        own = self.counts()
        fresh = {m: n - self._published.get(m, 0.0) for m, n in own.items()}
        bucket = now_s - now_s % self.bucket_s
        await self.db.add_observed(self.holder, bucket, fresh)
        self._published = {m: max(n, self._published.get(m, 0.0)) for m, n in own.items()}
        return await self._acquire(now_s)

    async def renew(self) -> None:
        """Renew a held lease between ticks (every `control.sync_s`, outside the tick's lock),
        so that a tick slowed by the cloud's API (throttling, botocore's backoff) or by warming
        the pool does not let the lease run out and hand the fleet to another host in the
        middle of its actions. Only a holder renews: taking the lease is the tick's."""
        if self.holder is not None and self.fence is not None:
            await self._acquire(self.clock())

    async def _acquire(self, now_s: float) -> bool:
        assert self.holder is not None
        ttl = self.config.control.lease_ticks * self.config.control.tick_s
        lease = await self.db.acquire_lease(self.holder, now_s, ttl)
        was = self.fence
        self.fence = None if lease is None else Fence(self.holder, lease.term)
        if self.fence != was:
            logger.info(
                "control lease: %s",
                f"leading in term {lease.term}" if lease is not None else "following",
            )
        return lease is not None

    async def _publish_busy(self) -> None:
        """Add this host's busy seconds since the last call to its shared rows: each host
        publishes, and the leader shares charges by the sum over hosts, which also outlives
        a restart of this process (its counters start again at zero, and so does this)."""
        own = dict(self.busy())
        for key, seconds in self.placement.load_seconds.items():  # the placement's loads
            own[key] = own.get(key, 0.0) + seconds
        fresh = {k: s - self._published_busy.get(k, 0.0) for k, s in own.items()}
        await self.db.add_busy(self.holder or "", fresh)
        self._published_busy = {k: max(s, self._published_busy.get(k, 0.0)) for k, s in own.items()}

    async def _totals(self) -> Mapping[str, float]:
        """Cumulative requests per model: this host's counters, or with a lease the sum over
        every host's shared counts."""
        if self.holder is None:
            return self.counts()
        return await self.db.observed_totals()

    def _observe(self, models: list[Model], now_s: float, totals: Mapping[str, float]) -> None:
        """Feed each forecaster the whole buckets that ended since the last observation,
        stamped with their starts. The counters are read only at ticks, so when several buckets
        ended (a late tick) their requests are shared evenly between them."""
        for model in models:
            total = float(totals.get(model.name, 0.0))
            forecaster = self.forecasters.get(model.name)
            if forecaster is None:
                forecaster = self._new_forecaster(model.name)
                self.forecasters[model.name] = forecaster
            stamp = self._stamps.get(model.name)
            if stamp is None:  # first sight: the first bucket starts now
                self._stamps[model.name], self._last_counts[model.name] = now_s, total
                continue
            ended = whole_buckets(stamp, now_s, forecaster.bucket_s)
            if ended == 0:
                continue  # a re-plan within the bucket: it is not over yet
            share = max(total - self._last_counts[model.name], 0.0) / ended
            for k in range(ended):
                forecaster.observe(stamp + k * forecaster.bucket_s, share)
            self._stamps[model.name] = stamp + ended * forecaster.bucket_s
            self._last_counts[model.name] = total
        for gone in set(self.forecasters) - {m.name for m in models}:
            del self.forecasters[gone]
            self._last_counts.pop(gone, None)
            self._stamps.pop(gone, None)

    def _new_forecaster(self, model: str) -> Forecaster:
        """Forecasters refitted on a schedule get a phase from the model's name, so that a
        thousand models' fits spread over the schedule instead of landing on one tick."""
        name, bucket_s = self.config.forecast.predictor, self.bucket_s
        phase = zlib.crc32(model.encode()) % _REFIT_SPREAD_BUCKETS
        try:
            return create_forecaster(name, bucket_s=bucket_s, refit_phase_buckets=phase)
        except InvalidValue:  # not a refitting forecaster: it takes no phase
            return create_forecaster(name, bucket_s=bucket_s)

    def _forecast(self, model: Model, now_s: float, pool: ServerlessTerms | None) -> Forecast:
        buckets = forecast_buckets(self.config.planner.horizon_s, self.bucket_s)
        forecaster = self.forecasters[model.name]
        quantile = covered_quantile(self.config.forecast.quantile, model.slo, pool)
        observed = observed_peak = None
        if forecaster.observed_buckets > 0:
            base = forecaster.forecast(
                buckets,
                quantile,
                band=self.config.forecast.upper_band,
                peak_buckets=forecast_buckets(self.config.planner.scale_in_window_s, self.bucket_s),
            )
            mean, upper, start = np.array(base.mean_rps), np.array(base.upper_rps), base.start_s
            observed, observed_peak = base.observed_rps, base.observed_peak_rps
        else:
            mean, upper, start = np.zeros(buckets), np.zeros(buckets), now_s
        if self.schedule is not None:
            known = self.schedule.rates(model.name, start, self.bucket_s, buckets)
            mean, upper = np.maximum(mean, known), np.maximum(upper, known)
        return Forecast(
            start_s=start,
            bucket_s=self.bucket_s,
            mean_rps=tuple(float(v) for v in mean),
            upper_rps=tuple(float(v) for v in upper),
            quantile=quantile,
            observed_rps=observed,
            observed_peak_rps=observed_peak,
        )

    # -- the tick -------------------------------------------------------------------------

    async def tick(self) -> Plan | None:
        """Plan and apply under the lock; then warm the serverless pool outside it, so that
        pings to cold sandboxes never hold up a sync or an interruption's re-plan."""
        async with self._lock:
            result = await self._tick()
        if result is not None:
            await self._warm(result)
        return result

    async def _tick(self) -> Plan | None:
        now = self.clock()
        leading = await self.lead(now)
        models = await self.db.list_models()
        # A follower observes too, so that its forecasters are warm when it takes over.
        self._observe(models, now, await self._totals())
        if not leading:
            return None
        metrics.record_objectives(models, self.config.planner.budget_per_hour)
        await self._instance_types()
        try:
            offerings = await self.cloud.offerings()
        except MarkError as exc:
            await self._record_error(now, f"could not read offerings: {exc}")
            return None
        self._prices = Offerings.of(offerings).prices()
        pool = self._serverless_terms()
        forecasts = {m.name: self._forecast(m, now, pool) for m in models}
        metrics.record_forecasts({n: f.peak_upper_rps for n, f in forecasts.items()})
        shared = [m for m in models if shares_instances(m, self.config)]
        planned = [m for m in models if not shares_instances(m, self.config)]
        result: Plan | None = None
        for _ in range(_MAX_REPLANS):
            snapshot = build_snapshot(
                now,
                planned,
                forecasts,
                instances=self._planned(await self.db.list_instances()),
                offerings=offerings,
                instance_types=self._types,
                tick_s=self.config.control.tick_s,
                state=self.state,
                interruptions=self.interruptions,
                serverless=pool,
                batching=self.config.batching.enabled,
            )
            try:
                result = plan(snapshot, self.config.planner, self.cache)
            except Exception as exc:  # a planning bug must not stop serving
                logger.exception("planning failed")
                await self._record_error(now, f"planning failed: {exc!r}")
                return None
            self.state = result.state
            try:
                await self.db.add_decisions(result.decisions, fence=self.fence)
            except Fenced as exc:  # deposed while planning: the new leader acts, not this one
                logger.warning("%s", exc)
                self.fence = None
                return None
            metrics.record_decisions(result.decisions)
            if not await self._apply(result, now):
                break  # nothing refused: done; else re-plan with the refused pool unavailable
        try:
            await self.placement.tick(
                now, shared, forecasts, offerings, self._types, self.interruptions
            )
        except Exception as exc:  # a placement bug must not stop the rest of the tick
            logger.exception("placing the many-model fleet failed")
            await self._record_error(now, f"placement failed: {exc!r}")
        self._last_tick_s = now
        self.last_plan = result
        self._artifacts = {m.name: m.backend.artifact for m in models}
        if result is not None and (result.actions or result.deferred):
            logger.info(
                "tick: %d actions, %d launches deferred", len(result.actions), len(result.deferred)
            )
        return result

    def _planned(self, instances: list[Instance]) -> list[Instance]:
        """The instances the planner sees: all but the many-model fleet's in service (those
        draining or with a notice it retires, as any other)."""
        return [
            i
            for i in instances
            if i.placed_models is None
            or i.state == InstanceState.DRAINING
            or i.id in self.interruptions
        ]

    def _serverless_terms(self) -> ServerlessTerms | None:
        """The spill pool as the planner weighs it: its warm latency as configured, Lambda's
        price for one request of that latency at the function's memory, its concurrency. None
        without a pool or with spill off: nothing to spill to or to keep warm."""
        if self.serverless is None or not self.config.spill.enabled:
            return None
        pool, latency_ms = self.config.serverless, self.config.spill.serverless_warm_ms
        price = load_catalog().lambda_pricing.charge_usd(latency_ms, pool.memory_mb, pool.arm)
        return ServerlessTerms(latency_ms, price, pool.concurrency)

    async def _apply(self, result: Plan, now_s: float) -> bool:
        """Carry out the plan's fleet operations (`provisioner.policy.actions`); True when a
        launch was refused for capacity (the caller re-plans)."""
        refused = False
        live = {i.id: i for i in await self.db.list_instances()}
        for op in fleet_operations(result.actions, live):
            if isinstance(op.action, Launch):
                if refused:
                    continue  # the re-plan decides the rest with the refused pool excluded
                refused = not await self._launch(op.action, now_s)
            elif op.instance is None:
                continue
            elif op.kind == OperationKind.DRAIN:
                await self.db.save_instance(op.instance.transition(InstanceState.DRAINING, now_s))
            else:
                await self._terminate(op.instance, now_s)
        return refused

    async def _warm(self, result: Plan) -> None:
        """Keep the serverless pool as warm as the plan says, model by model (MArk's concurrent
        pings before a surge). A failed ping is logged: warming is an optimisation, serving
        and the next tick must not depend on it."""
        if self.serverless is None:
            return
        for name, count in sorted(result.warm_functions.items()):
            artifact = self._artifacts.get(name)
            if count <= 0 or artifact is None:
                continue
            try:
                pings = await self.serverless.warm(name, artifact, count)
                if pings:  # billed as Lambda bills them, so the ledger says what warming cost
                    await self.db.charge_serverless(
                        model=name,
                        requests=len(pings),
                        gb_seconds=sum(i.gb_seconds for i in pings),
                        usd=sum(i.cost_usd for i in pings),
                        at_s=self.clock(),
                        reason="warm",
                    )
            except Exception:
                logger.exception("warming %d functions for %s failed", count, name)

    async def _recorded(self, what: str, call: Callable[[], Awaitable[T]]) -> T | None:
        """`call`'s result, or None after a CloudError, logged and recorded as an ERROR decision.
        Retries happen below, in the provider (`RetryingCloud`, `control.apply_retries`);
        capacity refusals pass through: the caller re-plans."""
        try:
            return await call()
        except InsufficientCapacity:
            raise
        except CloudError as exc:
            logger.warning("%s failed: %s", what, exc)
            await self._record_error(self.clock(), f"{what} failed: {exc}")
            return None

    async def _launch(self, action: Launch, now_s: float) -> bool:
        """False when the pool refused for capacity (the caller re-plans without it)."""
        key = action.offering.key
        try:
            instance = await self._recorded(
                f"launch of {key} for {action.model}",
                lambda: self.cloud.launch(action.offering, list(action.serves)),
            )
        except InsufficientCapacity as exc:
            self.state = self.state.with_refusal(key, now_s)
            await self.db.add_decisions(
                [
                    Decision(
                        at_s=now_s,
                        action=ActionKind.ERROR,
                        reason=f"{key} refused the launch ({exc}); falling back to the next "
                        "pool or on-demand",
                        model=action.model,
                        offering_key=key,
                    )
                ]
            )
            return False
        if instance is not None:
            if action.placed is not None:
                instance = instance.model_copy(update={"placed_models": action.placed})
            await self._save_applied(instance)
        return True

    async def _save_applied(self, instance: Instance) -> None:
        """Record what the cloud just did; kept for the next sync when the database refuses."""
        self._unsaved[instance.id] = instance
        await self.db.save_instance(instance)
        del self._unsaved[instance.id]

    async def _terminate(self, inst: Instance, now_s: float) -> None:
        done_call = await self._recorded(
            f"terminate {inst.id}", lambda: _done(self.cloud.terminate(inst.id))
        )
        if done_call is None:
            return  # still recorded live: the next tick or reconciliation retries
        done = inst.transition(InstanceState.TERMINATED, self.clock())
        await self._save_applied(done)
        self.interruptions.pop(inst.id, None)
        await self._charge([done], self.clock())

    async def _record_error(self, now_s: float, reason: str, model: str | None = None) -> None:
        await self.db.add_decisions(
            [Decision(at_s=now_s, action=ActionKind.ERROR, reason=reason, model=model)]
        )

    # -- keeping the database in step with the cloud -------------------------------------

    async def sync(self) -> bool:
        """Reconcile the database with the cloud and update the cost ledger. True when live
        capacity vanished (reclaimed without notice): the caller re-plans at once."""
        lost = False
        async with self._lock:
            now = self.clock()
            await self._publish_busy()
            for applied in list(self._unsaved.values()):
                await self._save_applied(applied)
                if not applied.live:
                    await self._charge([applied], now)
            records = await self.db.list_instances(live_only=False)
            recent = [r for r in records if r.live or (r.terminated_at_s or 0) > now - 3600.0]
            for step in reconcile(
                recent, await self.cloud.list(), now, self.config.control.reconcile_grace_s
            ):
                if step.kind == ReconcileKind.TERMINATE_UNTRACKED:
                    await self.cloud.terminate(step.instance.id)
                    known = any(r.id == step.instance.id for r in records)
                    ended = step.instance.transition(InstanceState.TERMINATED, now)
                    await self.db.save_instance(ended)
                    if not known:
                        await self.db.add_decisions(
                            [
                                Decision(
                                    at_s=now,
                                    action=ActionKind.TERMINATE,
                                    reason=f"reconcile: {step.reason}",
                                    instance_id=step.instance.id,
                                    offering_key=step.instance.offering.key,
                                )
                            ]
                        )
                else:
                    await self.db.save_instance(step.instance)
                    if step.kind == ReconcileKind.MARK_VANISHED:
                        # one gone after its notice was counted at the notice
                        if self.interruptions.pop(step.instance.id, None) is None:
                            metrics.record_interruption("vanished")
                        lost = True
                        await self._charge([step.instance], now)
            live = await self.db.list_instances()
            await self._charge(live, now)
            await charging.prune(self.db, now)
            metrics.record_fleet(live, self._prices)
            if self.leading:
                try:
                    await self.placement.advance(now)
                except Exception as exc:  # as in the tick: never stops the sync
                    logger.exception("carrying out the placement failed")
                    await self._record_error(now, f"placement failed: {exc!r}")
        return lost

    async def close(self) -> None:
        """Stop the placement's loads in flight (at shutdown)."""
        await self.placement.close()

    @property
    def leading(self) -> bool:
        """This process may act on the fleet: it is the only one, or it holds the lease as of
        its last tick (a follower neither reconciles nor replaces: the leader does)."""
        return self.holder is None or self.fence is not None

    async def sync_and_replan(self) -> None:
        if not self.leading:
            return
        lost = await self.sync()
        if await self.replace_unhealthy() or lost:
            await self.tick()

    async def replace_unhealthy(self) -> bool:
        """Terminate the running instances the front ends have kept ejected for
        `control.unhealthy_replace_s` (the caller re-plans: True when it terminated one). The
        time counts from the first sync that saw the ejection."""
        now = self.clock()
        ejected = set(self.ejected())
        since = self._unhealthy_since
        for gone in set(since) - ejected:
            del since[gone]
        for instance_id in ejected:
            since.setdefault(instance_id, now)
        limit_s = self.config.control.unhealthy_replace_s
        due = {i for i, t in since.items() if now - t >= limit_s}
        if not due:
            return False
        replaced = False
        async with self._lock:
            for inst in await self.db.list_instances():
                if inst.id not in due or inst.state != InstanceState.RUNNING:
                    continue
                why = (
                    f"failed the front ends' health checks for {now - since[inst.id]:.0f} s "
                    f"(control.unhealthy_replace_s {limit_s:g}); terminating it to be replaced"
                )
                logger.warning("instance %s %s", inst.id, why)
                await self.db.add_decisions(
                    [
                        Decision(
                            at_s=now,
                            action=ActionKind.TERMINATE,
                            reason=why,
                            model=inst.models[0] if inst.models else None,
                            instance_id=inst.id,
                            offering_key=inst.offering.key,
                        )
                    ]
                )
                await self._terminate(inst, now)
                del since[inst.id]
                replaced = True
        return replaced

    async def _instance_types(self) -> dict[str, InstanceType]:
        """The cloud's instance types, read once (a sync before the first tick charges too)."""
        if not self._types:
            self._types = {t.name: t for t in await self.cloud.instance_types()}
        return self._types

    async def _charge(self, instances: Sequence[Instance], now_s: float) -> None:
        """The ledger's charge of `instances` up to now, at the prices of the last tick
        (`charging.charge`: a constant number of statements for any number of them)."""
        await charging.charge(self.db, instances, await self._instance_types(), self._prices, now_s)

    async def on_interruption(self, notice: InterruptionNotice) -> None:
        """Replace at once: record the notice and plan now rather than at the next tick. An
        instance already gone (no warning left, and the cloud no longer lists it) is recorded
        terminated first: there is nothing to drain."""
        if notice.terminate_at_s <= notice.at_s and await self._record_gone(notice):
            await self.tick()
            return
        self.interruptions[notice.instance_id] = notice.terminate_at_s
        metrics.record_interruption("notice")
        await self.db.add_decisions(
            [
                Decision(
                    at_s=notice.at_s,
                    action=ActionKind.DRAIN,
                    reason=(
                        f"interruption notice ({notice.reason}); the cloud takes it back at "
                        f"+{notice.terminate_at_s - notice.at_s:.0f} s"
                    ),
                    instance_id=notice.instance_id,
                )
            ]
        )
        await self.tick()

    async def _record_gone(self, notice: InterruptionNotice) -> bool:
        """Record the instance of a no-warning notice terminated when the cloud no longer
        lists it; False when it still does, or when it is spot (then it is handled as a
        notice: a spot instance taken back is its pool's preemption, which the planner avoids
        for `pool_cooldown_s`, whereas a crashed process says nothing about its pool)."""
        async with self._lock:
            if notice.instance_id in {i.id for i in await self.cloud.list()}:
                return False
            now = self.clock()
            for inst in await self.db.list_instances():
                if inst.id != notice.instance_id:
                    continue
                if inst.offering.market == Market.SPOT:
                    return False
                logger.warning("instance %s is gone: %s", inst.id, notice.reason)
                metrics.record_interruption("vanished")
                done = inst.transition(InstanceState.TERMINATED, now)
                await self.db.save_instance(done)
                self.interruptions.pop(inst.id, None)
                await self._charge([done], now)
                await self.db.add_decisions(
                    [
                        Decision(
                            at_s=now,
                            action=ActionKind.TERMINATE,
                            reason=f"the cloud reports it gone ({notice.reason}); replacing it",
                            model=inst.models[0] if inst.models else None,
                            instance_id=inst.id,
                            offering_key=inst.offering.key,
                        )
                    ]
                )
            return True

    async def watch_interruptions(self) -> None:
        async for notice in self.cloud.interruptions():
            if not self.leading:
                continue
            try:
                await self.on_interruption(notice)
            except Exception:
                logger.exception("handling interruption of %s failed", notice.instance_id)

    async def release_all(self) -> None:
        """Terminate and record every live instance (local cloud at shutdown: no worker process
        outlives `mark serve`)."""
        now = self.clock()
        for inst in await self.db.list_instances():
            await self._terminate(inst, now)
