"""The queue and executors of one loaded model in `mark worker`: server-side batch execution.

Each model has `parallelism` executors; an idle executor takes the oldest waiting request and the
waiting requests it can concatenate with (same batch key, at most `max_batch` rows, FIFO within
the key: `provisioner.policy.batching.take_batch`, the front end's rule) and runs them as one call.
Requests that arrive while a batch runs therefore form the next batch, with no added wait when
the server is idle.

Pacing (`profile`): with a profile T(b) = a + c*b for the instance type being imitated, each
batch of b rows takes at least T(b) ms, so one machine can stand in for a heterogeneous fleet with
the service times the planner assumes (MArk treats them as deterministic).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mark.apps.worker.loaders import ServedModel
from mark.core.protocol import (
    InferRequest,
    InferResponse,
    Tensor,
    batch_key,
    batch_size,
    concat,
    split,
)
from mark.core.types import Profile
from provisioner.policy.batching import take_batch

__all__ = ["ModelRunner", "WorkerStats", "InferenceFailed"]


@dataclass(slots=True)
class WorkerStats:
    """Counts a test or an operator can read at `GET /v2/models/{m}/stats`."""

    requests: int = 0
    batches: int = 0
    batch_rows: Counter[int] = field(default_factory=Counter)

    def to_json(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "batches": self.batches,
            "batch_rows": {str(k): v for k, v in sorted(self.batch_rows.items())},
        }


@dataclass(slots=True)
class _Waiting:
    request: InferRequest
    rows: int
    key: tuple[Any, ...] | None  # batch_key, computed once at arrival
    future: asyncio.Future[InferResponse]


class InferenceFailed(Exception):
    """The model raised on a single request's inputs (answered 400: the inputs are at fault)."""


class ModelRunner:
    """Queue and executors of one loaded version of a served model (`version` is what its
    answers say in `model_version`)."""

    def __init__(
        self, model: ServedModel, *, profile: Profile | None, max_batch: int, version: str
    ) -> None:
        self.model = model
        self.version = version
        self.profile = profile
        self.max_batch = max_batch
        self.stats = WorkerStats()
        self._waiting: deque[_Waiting] = deque()
        self._ready = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._execute_forever())
            for _ in range(profile.parallelism if profile else 1)
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def infer(self, request: InferRequest) -> InferResponse:
        future: asyncio.Future[InferResponse] = asyncio.get_running_loop().create_future()
        self._waiting.append(
            _Waiting(request, batch_size(request) or 1, batch_key(request), future)
        )
        self._ready.set()
        return await future

    async def _execute_forever(self) -> None:
        while True:
            while not self._waiting:
                self._ready.clear()
                await self._ready.wait()
            batch = [w for w in take_batch(self._waiting, self.max_batch) if not w.future.done()]
            if batch:
                await self._execute(batch)

    def _run(self, request: InferRequest) -> InferResponse:
        raw = self.model.predict({t.name: t.array for t in request.inputs})
        wanted = {o.name for o in request.outputs}
        return InferResponse(
            tuple(
                Tensor(meta.name, meta.datatype, raw[meta.name])
                for meta in self.model.outputs
                if not wanted or meta.name in wanted
            ),
            self.model.name,
            self.version,
        )

    async def _execute(self, batch: Sequence[_Waiting]) -> None:
        started = time.perf_counter()
        rows = sum(w.rows for w in batch)
        self.stats.requests += len(batch)
        self.stats.batches += 1
        self.stats.batch_rows[rows] += 1
        try:
            answers: list[InferResponse | Exception] = list(
                split(self._run(concat([w.request for w in batch])), [w.rows for w in batch])
            )
        except Exception:  # find the request at fault, answer the others
            answers = []
            for w in batch:
                try:
                    answers.append(self._run(w.request))
                except Exception as exc:  # the model rejected these inputs
                    answers.append(InferenceFailed(f"model {self.model.name} failed: {exc}"))
        if self.profile is not None:
            remaining_s = self.profile.service_ms(rows) / 1000.0 - (time.perf_counter() - started)
            if remaining_s > 0:
                await asyncio.sleep(remaining_s)
        for w, answer in zip(batch, answers, strict=True):
            if w.future.done():
                continue
            if isinstance(answer, Exception):
                w.future.set_exception(answer)
            else:
                w.future.set_result(
                    InferResponse(answer.outputs, self.model.name, self.version, w.request.id)
                )
