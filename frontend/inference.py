"""Inference endpoints of the front end (a Sanic blueprint registered by `create_app`).

KServe v2 / Open Inference Protocol: `GET /v2`, `GET /v2/models/{m}`, `GET /v2/models/{m}/ready`,
`POST /v2/models/{m}/infer` (also under `/versions/{v}/`), JSON or binary tensor data, so
`tritonclient.http` works unchanged; TF Serving REST: `POST /v1/models/{m}:predict`. Both become
the same internal request and go through the process's `Fleet` (frontend/fleet.py).

Errors are JSON `{"error": ...}`: 401 with `WWW-Authenticate` for a model that needs an inference
key and got none or a bad one (frontend/inference_keys.py, checked before anything else), 404
unknown model, 400 malformed body or a tensor that does not fit the model, 413 over
`server.max_body_mb` (Sanic, before the body is read), 503 with the reason when the deadline
cannot be met and nothing could spill it, or when no instance reports a model's metadata and its
artifact cannot be read (the metadata is an instance's, else the artifact's:
frontend/model_metadata.py). Never a 500 for a caller's mistake.

Listeners: before the server starts, each HTTP worker process builds its Fleet from
`app.ctx.config` and syncs it from `app.ctx.db` (opened by create_app's listener); the fleet is
`app.ctx.fleet`. With `spill.enabled` and a serverless provider, the fleet gets a spill monitor
whose pool is `provisioner.adapters.serverless.build_pool(config.serverless, ...)`: AWS Lambda, or
the
control plane's local pool through its Lambda Invoke API at `serverless.local_host:local_port`
(`mark serve` resolves port 0 before the workers start; with port 0 left unresolved, as when an
app is built alone, there is no local pool to reach and spill is off). Spilled cost goes to the
ledger through `app.ctx.db`. After the server stops, the fleet closes (503 for what is still
queued, the last cost rows written, the pool's client closed).
"""

from __future__ import annotations

import time
from importlib.metadata import version
from typing import Any

from sanic import Blueprint, Request, Sanic
from sanic.response import HTTPResponse, json, raw

from frontend import inference_keys, metrics
from frontend.fleet import Answer, Fleet, Unavailable
from frontend.spill_monitor import ChargeSink, SpillLedger, SpillMonitor
from mark.adapters.backends import BackendRejected
from mark.adapters.model_store import SpecObjects
from mark.core.config import Config
from mark.core.errors import NotFound
from mark.core.protocol import (
    HEADER_LENGTH,
    InferRequest,
    ProtocolError,
    encode_tf_response,
    encode_v2_response,
    parse_header_length,
    parse_tf_request,
    parse_v2_request,
    validate,
)
from provisioner.adapters.serverless import build_pool

__all__ = ["bp", "start_fleet", "stop_fleet", "spill_monitor"]

bp = Blueprint("inference")
# Keys first: loaded before the fleet starts, checked before any route that names a model.
bp.before_server_start(inference_keys.load_keys)
bp.after_server_stop(inference_keys.stop_keys)
bp.on_request(inference_keys.guard)

_SERVER = {"name": "mark", "version": version("mark"), "extensions": ["binary_tensor_data"]}


def _error(status: int, message: str) -> HTTPResponse:
    return json({"error": message}, status=status)


def spill_monitor(config: Config, ledger_sink: ChargeSink) -> SpillMonitor | None:
    """The spill monitor of one front-end process, None when spill is off or has nowhere to
    go."""
    if not config.spill.enabled:
        return None
    serverless = config.serverless
    if serverless.provider == "local" and serverless.local_port == 0:
        return None
    pool = build_pool(
        serverless,
        local_endpoint_url=f"http://{serverless.local_host}:{serverless.local_port}",
    )
    if pool is None:
        return None
    ledger = SpillLedger(ledger_sink, flush_interval_s=config.spill.ledger_flush_s)
    return SpillMonitor(pool, config.spill, ledger=ledger)


@bp.before_server_start
async def start_fleet(app: Sanic) -> None:
    config: Config = app.ctx.config
    budget = config.worker.memory_budget_bytes
    fleet = Fleet(
        config.batching,
        spill=spill_monitor(config, app.ctx.db),
        objects=SpecObjects(endpoint_url=config.worker.store_endpoint_url),
        memory_budget_mb=None if budget is None else budget / 2**20,
    )
    fleet.start_sync(app.ctx.db, config.batching.sync_interval_s)
    app.ctx.fleet = fleet


@bp.after_server_stop
async def stop_fleet(app: Sanic) -> None:
    fleet: Fleet | None = getattr(app.ctx, "fleet", None)
    if fleet is not None:
        await fleet.close()


def _fleet(request: Request) -> Fleet:
    fleet: Fleet = request.app.ctx.fleet
    return fleet


@bp.get("/v2")
async def server_metadata(request: Request) -> HTTPResponse:
    return json(_SERVER)


@bp.get("/v2/models/<name:str>")
@bp.get("/v2/models/<name:str>/versions/<model_version:str>", name="model_metadata_version")
async def model_metadata(request: Request, name: str, model_version: str = "") -> HTTPResponse:
    fleet = _fleet(request)
    try:
        model = fleet.model(name)
        meta = await fleet.metadata(name)
    except NotFound as exc:
        return _error(404, str(exc))
    except Unavailable as exc:  # no instance says, and the artifact cannot be read here
        return _error(exc.status, exc.reason)
    return json(
        {
            "name": model.name,
            "versions": meta.get("versions") or ["1"],
            "platform": meta.get("platform", "mark"),
            "inputs": meta.get("inputs", []),
            "outputs": meta.get("outputs", []),
        }
    )


@bp.get("/v2/models/<name:str>/ready")
@bp.get("/v2/models/<name:str>/versions/<model_version:str>/ready", name="model_ready_version")
async def model_ready(request: Request, name: str, model_version: str = "") -> HTTPResponse:
    fleet = _fleet(request)
    try:
        fleet.model(name)
    except NotFound as exc:
        return _error(404, str(exc))
    ready = bool(fleet.routable(name)) or fleet.spill is not None
    # The protocol: 200 when ready, a 4xx otherwise (Triton answers 400).
    return json({"name": name, "ready": ready}, status=200 if ready else 400)


async def _answer(request: Request, name: str, parsed: InferRequest) -> Answer | HTTPResponse:
    """Run the request through the fleet; an HTTPResponse when it ends in an error."""
    fleet = _fleet(request)
    started = time.perf_counter()
    slo_s = fleet.model(name).slo.latency_s
    try:
        answer = await fleet.infer(name, parsed)
    except Unavailable as exc:  # 503, or 429 when late requests are shed
        metrics.observe_answer(name, "none", exc.status, time.perf_counter() - started, slo_s)
        response = _error(exc.status, exc.reason)
        if exc.retry_after_s is not None:
            response.headers["Retry-After"] = str(exc.retry_after_s)
        return response
    except BackendRejected as exc:
        metrics.observe_answer(name, "none", exc.status, time.perf_counter() - started, None)
        return _error(exc.status, exc.message)
    metrics.observe_answer(name, answer.path, 200, time.perf_counter() - started, slo_s)
    return answer


def _reject(name: str, status: int, message: str) -> HTTPResponse:
    metrics.REQUESTS.labels(name, "none", str(status)).inc()
    return _error(status, message)


@bp.post("/v2/models/<name:str>/infer")
@bp.post("/v2/models/<name:str>/versions/<model_version:str>/infer", name="infer_version")
async def infer(request: Request, name: str, model_version: str = "") -> HTTPResponse:
    fleet = _fleet(request)
    try:
        fleet.model(name)
        given = parse_header_length(request.headers.get(HEADER_LENGTH))
        parsed = parse_v2_request(request.body, given)
        validate(parsed, await fleet.inputs(name))
    except NotFound as exc:
        return _error(404, str(exc))
    except ProtocolError as exc:
        return _reject(name, 400, exc.message)
    result = await _answer(request, name, parsed)
    if isinstance(result, HTTPResponse):
        return result
    if result.body is not None:  # the instance's own answer to the client's own body
        if result.header_length is not None:
            length = {HEADER_LENGTH: str(result.header_length)}
            return raw(result.body, headers=length, content_type="application/octet-stream")
        return raw(result.body, content_type="application/json")
    response = result.response
    body, header_length = encode_v2_response(
        response, parsed.binary_names([t.name for t in response.outputs])
    )
    headers: dict[str, Any] = {}
    if header_length is not None:
        headers[HEADER_LENGTH] = str(header_length)
        return raw(body, headers=headers, content_type="application/octet-stream")
    return raw(body, content_type="application/json")


@bp.post("/v1/models/<target:str>")
async def tf_predict(request: Request, target: str) -> HTTPResponse:
    name, sep, verb = target.rpartition(":")
    if not sep or verb != "predict":
        return _error(404, f"unknown TF Serving method {target!r} (only :predict is served)")
    fleet = _fleet(request)
    try:
        fleet.model(name)
        inputs = await fleet.inputs(name)
        parsed, fmt = parse_tf_request(request.body, inputs)
        validate(parsed, inputs)
    except NotFound as exc:
        return _error(404, str(exc))
    except ProtocolError as exc:
        return _reject(name, 400, exc.message)
    result = await _answer(request, name, parsed)
    if isinstance(result, HTTPResponse):
        return result
    return raw(encode_tf_response(result.response, fmt), content_type="application/json")
