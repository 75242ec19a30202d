"""The reference KServe v2 model server that local instances run (`mark worker`).

Open Inference Protocol over HTTP (aiohttp.web, light to start): health, server and model
metadata, `POST /v2/models/{m}/infer` (JSON or binary tensor data), plus TF Serving's
`POST /v1/models/{m}:predict` so the front end's TF Serving backend path has a real server.

Server-side batch execution: each model has `parallelism` executors; an idle executor takes the
oldest waiting request and the waiting requests it can concatenate with (same batch key, at most
`max_batch` rows, FIFO within the key: `provisioner.policy.batching.take_batch`, the front end's
rule) and runs them as one call. Requests that arrive while a batch runs
therefore form the next batch, with no added wait when the server is idle.

Pacing (`profiles`): with a profile T(b) = a + c*b for the instance type being imitated, each
batch of b rows takes at least T(b) ms, so one machine can stand in for a heterogeneous fleet with
the service times the planner assumes (MArk treats them as deterministic).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from mark.apps.worker.loaders import ServedModel
from mark.core.protocol import (
    HEADER_LENGTH,
    InferRequest,
    InferResponse,
    ProtocolError,
    Tensor,
    batch_key,
    batch_size,
    concat,
    encode_tf_response,
    encode_v2_response,
    parse_header_length,
    parse_tf_request,
    parse_v2_request,
    split,
    validate,
)
from mark.core.types import Profile
from provisioner.policy.batching import take_batch

__all__ = ["ModelRunner", "WorkerStats", "build_app", "SERVER_NAME"]

SERVER_NAME = "mark-worker"
_JSON = "application/json"


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
    """Queue and executors of one served model."""

    def __init__(self, model: ServedModel, *, profile: Profile | None, max_batch: int) -> None:
        self.model = model
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
            "1",
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
                    InferResponse(answer.outputs, self.model.name, "1", w.request.id)
                )


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _check_outputs(request: InferRequest, model: ServedModel) -> None:
    known = {m.name for m in model.outputs}
    for out in request.outputs:
        if out.name not in known:
            raise ProtocolError(f"unknown output {out.name!r}; the model has {sorted(known)}")


def build_app(
    models: Sequence[ServedModel],
    *,
    profiles: Mapping[str, Profile] | None = None,
    max_batch: int = 64,
    max_body_mb: float = 64.0,
    version: str = "0.1.0",
) -> web.Application:
    """The worker's aiohttp application serving `models` (runners start on app startup)."""
    app = web.Application(client_max_size=int(max_body_mb * 1024 * 1024))
    runners: dict[str, ModelRunner] = {}
    routes = web.RouteTableDef()

    async def start(_: web.Application) -> None:
        for m in models:
            runners[m.name] = ModelRunner(
                m, profile=(profiles or {}).get(m.name), max_batch=max_batch
            )

    async def stop(_: web.Application) -> None:
        await asyncio.gather(*(r.close() for r in runners.values()))

    app.on_startup.append(start)
    app.on_cleanup.append(stop)

    def runner_of(request: web.Request) -> ModelRunner:
        name = request.match_info["model"]
        runner = runners.get(name)
        if runner is None:
            raise web.HTTPNotFound(
                text=json.dumps({"error": f"unknown model {name!r}"}), content_type=_JSON
            )
        return runner

    @routes.get("/v2/health/live")
    @routes.get("/v2/health/ready")
    async def health(_: web.Request) -> web.Response:
        return web.json_response({"live": True, "ready": True})

    @routes.get("/v2")
    async def server_metadata(_: web.Request) -> web.Response:
        return web.json_response(
            {"name": SERVER_NAME, "version": version, "extensions": ["binary_tensor_data"]}
        )

    @routes.get("/v2/models/{model}")
    async def model_metadata(request: web.Request) -> web.Response:
        m = runner_of(request).model
        return web.json_response(
            {
                "name": m.name,
                "versions": ["1"],
                "platform": m.platform,
                "inputs": [t.to_json() for t in m.inputs],
                "outputs": [t.to_json() for t in m.outputs],
            }
        )

    @routes.get("/v2/models/{model}/ready")
    async def model_ready(request: web.Request) -> web.Response:
        runner_of(request)
        return web.json_response({"name": request.match_info["model"], "ready": True})

    @routes.get("/v2/models/{model}/stats")
    async def model_stats(request: web.Request) -> web.Response:
        return web.json_response(runner_of(request).stats.to_json())

    @routes.post("/v2/models/{model}/infer")
    async def infer(request: web.Request) -> web.Response:
        runner = runner_of(request)
        try:
            length = parse_header_length(request.headers.get(HEADER_LENGTH))
            parsed = parse_v2_request(await request.read(), length)
            validate(parsed, runner.model.inputs)
            _check_outputs(parsed, runner.model)
            answer = await runner.infer(parsed)
        except (ProtocolError, InferenceFailed) as exc:
            return _error(400, getattr(exc, "message", str(exc)))
        body, header_length = encode_v2_response(
            answer, parsed.binary_names([t.name for t in answer.outputs])
        )
        if header_length is None:
            return web.Response(body=body, content_type=_JSON)
        return web.Response(
            body=body,
            content_type="application/octet-stream",
            headers={HEADER_LENGTH: str(header_length)},
        )

    @routes.post("/v1/models/{model}:predict")
    async def tf_predict(request: web.Request) -> web.Response:
        runner = runner_of(request)
        try:
            parsed, fmt = parse_tf_request(await request.read(), runner.model.inputs)
            validate(parsed, runner.model.inputs)
            answer = await runner.infer(parsed)
        except (ProtocolError, InferenceFailed) as exc:
            return _error(400, getattr(exc, "message", str(exc)))
        return web.Response(body=encode_tf_response(answer, fmt), content_type=_JSON)

    app.add_routes(routes)
    return app
