"""The queue-time spill monitor (MArk's "Bouncer"; DESIGN.md, "Spill"; issue 7, item 3).

The fleet (frontend/fleet.py) asks it about every queued request at enqueue and every
`spill.interval_ms`. Which of a queue's requests go to the pool is decided by the pure
`provisioner.policy.dataplane.select_spills` (the spill rule walked over the queue from its
head), the one the simulator runs too; this module adds what the rule cannot know alone:

- `SpillMonitor.select` gives the rule the front end's requests: those already answered are
  left out, one whose spill failed before stays queued (and counts as ahead of the rest).
- `SpillMonitor` holds the process's serverless pool (`provisioner.adapters.serverless.build_pool`:
  AWS Lambda, or the control plane's local pool through its Lambda Invoke API), sends spilled
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
from provisioner.policy.dataplane import select_spills
from provisioner.policy.spill import QueueView, ServerlessProfile, SpillReason

__all__ = ["ChargeSink", "SpillLedger", "SpillMonitor"]

logger = logging.getLogger("mark.frontend.spill")


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
        queue: QueueView,
        *,
        slo: Slo,
        now_s: float,
        pool: ServerlessProfile,
    ) -> tuple[list[tuple[QueuedRequest, SpillReason]], ServerlessProfile]:
        """The requests of `pending` (FIFO, head first) to send to the pool now, each with its
        reason, and the pool profile left once their slots are taken (`select_spills`).
        Requests already answered are skipped; those whose spill failed before stay queued."""
        live = [q for q in pending if not q.done]
        chosen, pool = select_spills(
            [q.deadline_s if q.spill_error is None else None for q in live],
            queue,
            now_s=now_s,
            slo=slo,
            pool=pool,
            margin_ms=self.config.margin_ms,
        )
        return [(live[i], reason) for i, reason in chosen], pool

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

    def start(self) -> None:
        if self.ledger is not None:
            self.ledger.start()

    async def close(self) -> None:
        if self.ledger is not None:
            await self.ledger.close()
        await self.pool.close()
