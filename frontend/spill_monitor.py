"""The queue-time spill monitor (MArk's "Bouncer"; DESIGN.md, "Spill"; issue 7, item 3).

The fleet (frontend/fleet.py) asks it about every queued request at enqueue and every
`spill.interval_ms`; what to do with one request is decided by the pure rule
`provisioner.policy.spill.spill_reason`, the one the simulator runs too. This module adds what the
rule
cannot know alone:

- `select_spills` walks one instance's FIFO from the head. A request's position counts the
  requests sent to the instance and not answered yet plus those ahead of it in the queue that stay;
  a request that spills leaves the queue, so the ones behind it move up. Each spill takes one
  slot of the pool (and a warm sandbox when one is idle), so the pool profile shrinks as the
  walk goes and the walk stops when the pool is full. Positions count requests (a request of
  several rows counts once), rates are requests per second at the batch size b of the current
  plan: parallelism * b / T(b).
- `SpillMonitor` holds the process's serverless pool (`provisioner.adapters.serverless.build_pool`:
  AWS
  Lambda, or the control plane's local pool through its Lambda Invoke API), sends spilled
  requests to it, counts them by reason in Prometheus and hands their cost to the ledger.
- `SpillLedger` batches the cost rows: one `Database.charge_serverless` row per model and reason
  per flush (every `spill.ledger_flush_s`), so the hot path never waits on the database; a failed
  write is kept and retried at the next flush.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Protocol

from frontend import metrics
from frontend.batcher import QueuedRequest
from mark.core.config import SpillConfig
from mark.core.protocol import InferResponse
from mark.core.types import Model, Slo
from provisioner.adapters.serverless import (
    InputRejected,
    Invocation,
    ServerlessPool,
    Throttled,
    infer,
)
from provisioner.policy.spill import QueueView, ServerlessProfile, SpillReason, spill_reason

__all__ = ["InstanceQueue", "select_spills", "ChargeSink", "SpillLedger", "SpillMonitor"]

logger = logging.getLogger("mark.frontend.spill")


@dataclass(frozen=True, slots=True)
class InstanceQueue:
    """One queue as the rule sees it: requests sent and not answered (`ahead`), the instance's
    throughput and batch time at its current plan, the model's running instances, and whether
    the instance is draining. A model with no running instance has `running_instances=0`."""

    ahead: int = 0
    service_rate_rps: float = 0.0
    batch_service_ms: float = 0.0
    running_instances: int = 0
    draining: bool = False


def _reserve(pool: ServerlessProfile) -> ServerlessProfile:
    """The pool after one more invocation starts: one slot fewer, one idle warm sandbox fewer."""
    return replace(pool, free_slots=pool.free_slots - 1, idle_warm=max(pool.idle_warm - 1, 0))


def select_spills(
    pending: Iterable[QueuedRequest],
    queue: InstanceQueue,
    *,
    now_s: float,
    slo: Slo,
    pool: ServerlessProfile,
    margin_ms: float,
) -> tuple[list[tuple[QueuedRequest, SpillReason]], ServerlessProfile]:
    """The requests of `pending` (FIFO, head first) to send to the pool now, each with its
    reason, and the pool profile left once their slots are taken. Requests already answered are
    skipped; requests whose spill failed before stay queued and count as ahead of the rest."""
    chosen: list[tuple[QueuedRequest, SpillReason]] = []
    position = queue.ahead
    for q in pending:
        if pool.free_slots <= 0 or not pool.enabled:
            break
        if q.done:
            continue
        reason = None
        if q.spill_error is None:
            view = QueueView(
                position=position,
                deadline_s=q.deadline_s,
                service_rate_rps=queue.service_rate_rps,
                batch_service_ms=queue.batch_service_ms,
                running_instances=queue.running_instances,
                draining=queue.draining,
            )
            reason = spill_reason(view, now_s, slo, pool, margin_ms)
        if reason is None:
            position += 1
        else:
            chosen.append((q, reason))
            pool = _reserve(pool)
    return chosen, pool


class ChargeSink(Protocol):
    """Where spilled cost goes (`mark.adapters.db.Database` is one)."""

    async def charge_serverless(
        self, *, model: str, requests: int, gb_seconds: float, usd: float, at_s: float, reason: str
    ) -> None: ...


@dataclass(slots=True)
class _Charge:
    requests: int = 0
    gb_seconds: float = 0.0
    usd: float = 0.0


class SpillLedger:
    """Spilled cost, written to the ledger in batches (one row per model and reason per flush).
    `record` never blocks; `start()` flushes every `flush_interval_s`, `close()` flushes the
    rest. Must be started inside a running event loop."""

    def __init__(
        self,
        sink: ChargeSink,
        *,
        flush_interval_s: float = 1.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._sink = sink
        self._interval_s = flush_interval_s
        self._wall_clock = wall_clock
        self._due: dict[tuple[str, str], _Charge] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def record(self, model: str, reason: str, invocation: Invocation) -> None:
        charge = self._due.setdefault((model, reason), _Charge())
        charge.requests += 1
        charge.gb_seconds += invocation.gb_seconds
        charge.usd += invocation.cost_usd

    @property
    def unwritten_usd(self) -> float:
        return sum(c.usd for c in self._due.values())

    def start(self) -> None:
        self._task = asyncio.create_task(self._flush_forever())

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.flush()

    async def flush(self) -> None:
        """Write what is due; on a database error keep it for the next flush."""
        async with self._lock:
            due, self._due = self._due, {}
            at_s = self._wall_clock()
            for (model, reason), charge in due.items():
                try:
                    await self._sink.charge_serverless(
                        model=model,
                        requests=charge.requests,
                        gb_seconds=charge.gb_seconds,
                        usd=charge.usd,
                        at_s=at_s,
                        reason=reason,
                    )
                except Exception:  # the database may be briefly away: keep the charge, retry
                    logger.exception("writing spilled cost of %s failed; retrying later", model)
                    kept = self._due.setdefault((model, reason), _Charge())
                    kept.requests += charge.requests
                    kept.gb_seconds += charge.gb_seconds
                    kept.usd += charge.usd

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.flush()


class SpillMonitor:
    """One process's way to the serverless pool: which requests may go (`profile`,
    `select`), and sending them (`spill`)."""

    def __init__(
        self,
        pool: ServerlessPool,
        config: SpillConfig,
        *,
        ledger: SpillLedger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.config = config
        self.ledger = ledger
        self._clock = clock
        # Spills decided and not yet started on the pool (the pool counts them once started).
        self._launching: dict[str, int] = {}
        # After a throttle the pool counts as full for a moment: its slots are shared with the
        # other front-end processes, whose spills this process's estimate cannot see.
        self._full_until_s = 0.0

    def profile(self, model: str) -> ServerlessProfile:
        """The pool for `model` as the rule sees it, less the spills decided and not started."""
        pool = self.pool.profile(model, self.config.serverless_warm_ms)
        launching = sum(self._launching.values())
        full = self._clock() < self._full_until_s
        return replace(
            pool,
            free_slots=0 if full else pool.free_slots - launching,
            idle_warm=max(pool.idle_warm - self._launching.get(model, 0), 0),
            enabled=self.config.enabled and pool.enabled,
        )

    def select(
        self,
        pending: Iterable[QueuedRequest],
        queue: InstanceQueue,
        *,
        slo: Slo,
        now_s: float,
        pool: ServerlessProfile,
    ) -> tuple[list[tuple[QueuedRequest, SpillReason]], ServerlessProfile]:
        return select_spills(
            pending, queue, now_s=now_s, slo=slo, pool=pool, margin_ms=self.config.margin_ms
        )

    def can_take(self, model: str) -> bool:
        """Whether a request past saving on the instances may still go to the pool (a late
        answer beats none): spill is on and a slot is free."""
        pool = self.profile(model)
        return pool.enabled and pool.free_slots > 0

    def reserve(self, model: str) -> None:
        """Take a slot for a spill about to start (call `spill` for it in the same step or
        soon after)."""
        self._launching[model] = self._launching.get(model, 0) + 1

    async def spill(self, model: Model, q: QueuedRequest, reason: SpillReason) -> InferResponse:
        """Answer `q` through the pool (after `reserve`); raises what the pool raised. A
        throttle (every slot busy) makes the pool count as full for `throttle_backoff_ms`."""
        name = model.name
        left = self._launching.get(name, 0) - 1
        if left > 0:
            self._launching[name] = left
        else:
            self._launching.pop(name, None)
        try:
            response, invocation = await infer(self.pool, model, q.request)
        except InputRejected as exc:  # answered (400), and billed like any invocation
            self._charge(name, reason, exc.invocation)
            raise
        except Throttled:
            self._full_until_s = self._clock() + self.config.throttle_backoff_ms / 1000.0
            metrics.SPILL_FAILURES.labels(name, reason.value).inc()
            raise
        except Exception:
            metrics.SPILL_FAILURES.labels(name, reason.value).inc()
            raise
        self._charge(name, reason, invocation)
        return InferResponse(response.outputs, name, response.model_version, q.request.id)

    def _charge(self, name: str, reason: SpillReason, invocation: Invocation) -> None:
        metrics.SPILLS.labels(name, reason.value).inc()
        metrics.SPILL_COST.labels(name).inc(invocation.cost_usd)
        if self.ledger is not None:
            self.ledger.record(name, reason.value, invocation)

    async def warm(self, model: Model, count: int) -> int:
        """Load `model` in `count` functions at once before an expected surge (MArk pings
        Lambda concurrently for this); returns how many answered. Pings are billed like any
        invocation and recorded with reason "warm"."""
        event = {"model": model.name, "artifact": model.backend.artifact, "warm": True}
        results = await asyncio.gather(
            *(self.pool.invoke(event) for _ in range(count)), return_exceptions=True
        )
        warmed = [r for r in results if isinstance(r, Invocation)]
        for invocation in warmed:
            metrics.SPILL_COST.labels(model.name).inc(invocation.cost_usd)
            if self.ledger is not None:
                self.ledger.record(model.name, "warm", invocation)
        return len(warmed)

    def start(self) -> None:
        if self.ledger is not None:
            self.ledger.start()

    async def close(self) -> None:
        if self.ledger is not None:
            await self.ledger.close()
        await self.pool.close()
