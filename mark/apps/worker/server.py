"""The reference KServe v2 model server that local instances run (`mark worker`).

Open Inference Protocol over HTTP (aiohttp.web, light to start): health, server and model
metadata, `POST /v2/models/{m}/infer` (JSON or binary tensor data), plus TF Serving's
`POST /v1/models/{m}:predict` so the front end's TF Serving backend path has a real server.
Batch execution and pacing are the runner's (runner.py); which models are in memory is the
cache's (cache.py): a request for a stored model that is not loaded loads it first.

The model repository extension, in the shapes Triton documents
(triton-inference-server/server docs/protocol/extension_model_repository.md) and MLServer serves
(mlserver/rest/app.py, mlserver/handlers/model_repository.py, mlserver/types/model_repository.py):
`POST /v2/repository/index` (body `{"ready": bool}` optional) answers a JSON array of
`{"name", "version" (when loaded), "state", "reason"}`, state READY, LOADING or UNAVAILABLE
(304 to an `If-None-Match` of the index's tag while it is unchanged: `index_etag`);
`POST /v2/repository/models/{m}/load` and `.../unload` answer 200 with an empty body, errors
`{"error": ...}`. A model loaded through the API is pinned (never evicted) until unloaded, unless
the load carries `Mark-Load-Pin: false` (the front end's loads: mark/core/protocol/repository.py);
an unload with `Mark-Unload-Idle-S: N` (the front end's idle unloads) is refused with 409 unless
the model is unpinned, idle for N seconds and has nothing in flight.
`GET /v2` adds `model_repository` to the extensions and the cache's budgets and loaded models
(bytes, load time) under `cache`; `GET /metrics` is Prometheus text (metrics.py).

Statuses: unknown model 404; larger than the whole memory budget 422; no room without evicting a
protected model, or an artifact missing or failing to load, 503 with Retry-After and the reason;
the former also with `Mark-Refused: no-room` (mark/core/protocol/repository.py).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from mark.apps.worker.cache import ModelCache, ModelInUse, ModelTooLarge, ModelUnavailable, NoRoom
from mark.apps.worker.loaders import ServedModel
from mark.apps.worker.runner import InferenceFailed
from mark.core.errors import NotFound
from mark.core.protocol import (
    HEADER_LENGTH,
    LOAD_PIN_HEADER,
    NO_ROOM,
    REFUSED_HEADER,
    UNLOAD_IDLE_HEADER,
    InferRequest,
    ProtocolError,
    encode_tf_response,
    encode_v2_response,
    index_etag,
    parse_header_length,
    parse_tf_request,
    parse_v2_request,
    validate,
)

__all__ = ["build_app", "SERVER_NAME"]

SERVER_NAME = "mark-worker"
_JSON = "application/json"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _cache_errors(handler: Handler) -> Handler:
    """The cache's refusals as the statuses of the module docstring."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except NotFound as exc:
            return _error(404, str(exc))
        except ModelTooLarge as exc:
            return _error(422, str(exc))
        except ModelInUse as exc:
            return _error(409, str(exc))
        except ModelUnavailable as exc:
            retry = {"Retry-After": str(exc.retry_after_s)}
            if isinstance(exc, NoRoom):
                retry[REFUSED_HEADER] = NO_ROOM
            return _error(503, f"model {request.match_info['model']!r}: {exc.reason}", retry)

    return guarded


def _check_outputs(request: InferRequest, model: ServedModel) -> None:
    known = {m.name for m in model.outputs}
    for out in request.outputs:
        if out.name not in known:
            raise ProtocolError(f"unknown output {out.name!r}; the model has {sorted(known)}")


def build_app(cache: ModelCache, *, max_body_mb: float = 64.0, version: str) -> web.Application:
    """The worker's aiohttp application over `cache` (started by the caller, closed on the
    app's cleanup)."""
    app = web.Application(client_max_size=int(max_body_mb * 1024 * 1024))
    routes = web.RouteTableDef()

    async def stop(_: web.Application) -> None:
        await cache.close()

    app.on_cleanup.append(stop)

    @routes.get("/v2/health/live")
    @routes.get("/v2/health/ready")
    async def health(_: web.Request) -> web.Response:
        return web.json_response({"live": True, "ready": True})

    @routes.get("/v2")
    async def server_metadata(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "name": SERVER_NAME,
                "version": version,
                "extensions": ["binary_tensor_data", "model_repository"],
                "cache": cache.describe(),
            }
        )

    @routes.get("/metrics")
    async def prometheus(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    @routes.get("/v2/models/{model}")
    @_cache_errors
    async def model_metadata(request: web.Request) -> web.Response:
        async with cache.serving(request.match_info["model"]) as runner:
            m = runner.model
            return web.json_response(
                {
                    "name": m.name,
                    "versions": [runner.version],
                    "platform": m.platform,
                    "inputs": [t.to_json() for t in m.inputs],
                    "outputs": [t.to_json() for t in m.outputs],
                }
            )

    @routes.get("/v2/models/{model}/ready")
    @_cache_errors
    async def model_ready(request: web.Request) -> web.Response:
        name = request.match_info["model"]
        return web.json_response({"name": name, "ready": await cache.ready(name)})

    @routes.get("/v2/models/{model}/stats")
    async def model_stats(request: web.Request) -> web.Response:
        runner = cache.runner(request.match_info["model"])
        if runner is None:
            return _error(404, f"model {request.match_info['model']!r} is not loaded")
        return web.json_response(runner.stats.to_json())

    @routes.post("/v2/models/{model}/infer")
    @_cache_errors
    async def infer(request: web.Request) -> web.Response:
        async with cache.serving(request.match_info["model"]) as runner:
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
    @_cache_errors
    async def tf_predict(request: web.Request) -> web.Response:
        async with cache.serving(request.match_info["model"]) as runner:
            try:
                parsed, fmt = parse_tf_request(await request.read(), runner.model.inputs)
                validate(parsed, runner.model.inputs)
                answer = await runner.infer(parsed)
            except (ProtocolError, InferenceFailed) as exc:
                return _error(400, getattr(exc, "message", str(exc)))
        return web.Response(body=encode_tf_response(answer, fmt), content_type=_JSON)

    @routes.post("/v2/repository/index")
    async def repository_index(request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw.strip() else {}
            ready_only = body.get("ready", False) if isinstance(body, dict) else None
        except ValueError:
            ready_only = None
        if not isinstance(ready_only, bool):
            return _error(400, 'the index request is a JSON object {"ready": boolean}')
        index = json.dumps(await cache.index(ready_only=ready_only)).encode()
        etag = index_etag(index)
        if request.headers.get("If-None-Match") == etag:  # unchanged since the caller's read
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=index, content_type="application/json", headers={"ETag": etag})

    @routes.post("/v2/repository/models/{model}/load")
    @_cache_errors
    async def repository_load(request: web.Request) -> web.Response:
        pin = request.headers.get(LOAD_PIN_HEADER, "true").strip().lower() != "false"
        await cache.load(request.match_info["model"], pin=pin)
        return web.Response(status=200)

    @routes.post("/v2/repository/models/{model}/unload")
    @_cache_errors
    async def repository_unload(request: web.Request) -> web.Response:
        raw = request.headers.get(UNLOAD_IDLE_HEADER)
        try:
            idle_s = None if raw is None else float(raw)
        except ValueError:
            idle_s = -1.0
        if idle_s is not None and not idle_s >= 0:
            return _error(400, f"{UNLOAD_IDLE_HEADER} is seconds (>= 0), got {raw!r}")
        await cache.unload(request.match_info["model"], idle_s=idle_s)
        return web.Response(status=200)

    app.add_routes(routes)
    return app
