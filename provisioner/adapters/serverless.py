"""The serverless pool that spilled requests go to (MArk's Lambda path), behind one interface.

- `LambdaPool`: AWS Lambda through boto3 `invoke` (RequestResponse, `LogType=Tail` so the REPORT
  line gives the billed duration, the memory size and the init duration of a cold start).
- `LocalFunctionPool`: the embedded default. Lambda's execution model on this machine: each
  sandbox is a fresh spawned process that imports `deploy/lambda/handler.py`, the same file that
  runs on Lambda; a sandbox runs one invocation at a time, keeps what it loaded (a warm start
  reuses it), idles out after `keep_warm_s`, and is killed when it passes the function timeout or
  its memory size. At most `concurrency` sandboxes exist; an invocation beyond that is throttled
  (Lambda's 429). Billing is Lambda's: per request plus GB-seconds of duration (init included,
  as AWS bills on-demand functions since August 2025), rounded to 1 ms, from the catalog's
  `lambda_pricing.json`.
- `InvokeServer`: Lambda's Invoke HTTP API (`POST /2015-03-31/functions/{name}/invocations`) on
  loopback in front of a local pool, so that front-end processes reach the local pool with the
  very boto3 client they would use against AWS (`LambdaPool` with `endpoint_url`).

Both pools keep the latency the spill rule needs (`profile(model)`: warm latency and cold start
as observed, idle-warm sandboxes, free slots) and what was spent.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import logging
import math
import multiprocessing
import re
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import boto3
from aiohttp import web
from botocore import UNSIGNED
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from mark.core.config import ServerlessConfig
from mark.core.errors import CloudError, MarkError
from mark.core.protocol import InferRequest, InferResponse, encode_v2_request, parse_v2_response
from mark.core.types import Model
from provisioner.policy.spill import ServerlessProfile

if TYPE_CHECKING:
    from mark.core.catalog import LambdaPricing

__all__ = [
    "ServerlessPool",
    "Invocation",
    "PoolStats",
    "PayloadTooLarge",
    "Throttled",
    "FunctionError",
    "InputRejected",
    "LocalFunctionPool",
    "LambdaPool",
    "InvokeServer",
    "DEFAULT_HANDLER_PATH",
    "INVOKE_PATH",
    "spill_event",
    "infer",
    "build_pool",
]

log = logging.getLogger("mark.serverless")

DEFAULT_HANDLER_PATH = Path(__file__).resolve().parents[2] / "deploy" / "lambda" / "handler.py"
INVOKE_PATH = "/2015-03-31/functions/{name}/invocations"
_EWMA_WEIGHT = 0.2


class PayloadTooLarge(MarkError):
    """The event or the result is over Lambda's synchronous payload limit (6 MB): HTTP 413."""

    status = 413


class Throttled(CloudError):
    """Every sandbox is busy (Lambda's TooManyRequestsException, HTTP 429)."""


class FunctionError(CloudError):
    """The function ran and failed: it raised, timed out, or passed its memory size."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type


class InputRejected(MarkError):
    """The function refused the request as not fitting the model (the caller's mistake: 400).
    The invocation ran and is billed: `invocation` carries its cost."""

    status = 400

    def __init__(self, message: str, invocation: Invocation) -> None:
        super().__init__(message)
        self.message = message
        self.invocation = invocation


@dataclass(frozen=True, slots=True)
class Invocation:
    """One finished invocation: the handler's result and what Lambda would bill for it."""

    request_id: str
    result: Mapping[str, Any]
    duration_ms: float
    init_ms: float
    billed_ms: float
    memory_mb: int
    max_memory_used_mb: float
    cost_usd: float

    @property
    def cold_start(self) -> bool:
        return self.init_ms > 0

    @property
    def gb_seconds(self) -> float:
        return self.billed_ms / 1000.0 * self.memory_mb / 1024.0


@runtime_checkable
class ServerlessPool(Protocol):
    name: str
    memory_mb: int
    observed: PoolStats

    async def invoke(self, event: Mapping[str, Any]) -> Invocation:
        """Run the handler on `event` (RequestResponse). Raises PayloadTooLarge, Throttled,
        FunctionError, or CloudError for transport failures."""
        ...

    def profile(self, model: str, default_warm_ms: float) -> ServerlessProfile:
        """The pool as the spill rule sees it for `model`; `default_warm_ms` stands in for the
        warm latency until one has been observed."""
        ...

    async def close(self) -> None: ...


def _load_pricing() -> LambdaPricing:
    from mark.core.catalog import load_catalog

    return load_catalog().lambda_pricing


def _billed_ms(ms: float, granularity_ms: float) -> float:
    return math.ceil(ms / granularity_ms - 1e-9) * granularity_ms


@dataclass(slots=True)
class PoolStats:
    """Latency and load as observed by one pool: EWMA of warm latency per model and of cold
    starts, invocations in flight, and recent peaks (the Lambda pool's warm-sandbox estimate)."""

    cold_start_ms: float
    warm_ms: dict[str, float] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=dict)
    recent_peak: dict[str, tuple[int, float]] = field(default_factory=dict)
    spent_usd: float = 0.0
    invocations: int = 0
    cold_starts: int = 0

    def started(self, model: str, now_s: float) -> None:
        count = self.in_flight.get(model, 0) + 1
        self.in_flight[model] = count
        peak, _ = self.recent_peak.get(model, (0, now_s))
        self.recent_peak[model] = (max(peak, count), now_s)

    def finished(self, model: str, wall_ms: float | None, invocation: Invocation | None) -> None:
        self.in_flight[model] = max(self.in_flight.get(model, 1) - 1, 0)
        if invocation is None or wall_ms is None:
            return
        self.invocations += 1
        self.spent_usd += invocation.cost_usd
        if invocation.cold_start:
            self.cold_starts += 1
            self.cold_start_ms += _EWMA_WEIGHT * (invocation.init_ms - self.cold_start_ms)
            wall_ms -= invocation.init_ms
        previous = self.warm_ms.get(model)
        self.warm_ms[model] = (
            wall_ms if previous is None else previous + _EWMA_WEIGHT * (wall_ms - previous)
        )

    def total_in_flight(self) -> int:
        return sum(self.in_flight.values())


# ---- the local pool -----------------------------------------------------------------------


def _sandbox_main(conn: Connection, handler_path: str) -> None:
    """A sandbox process: import the handler file, say ready, then run one event at a time."""
    spec = importlib.util.spec_from_file_location("mark_lambda_handler", handler_path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import the Lambda handler from {handler_path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    conn.send_bytes(b"ready")
    while True:
        try:
            event = json.loads(conn.recv_bytes())
        except EOFError:
            return
        try:
            reply: dict[str, Any] = {"ok": module.handler(event, None)}
        except Exception as exc:  # the function's own failure, reported as Lambda does
            reply = {"error": {"errorType": type(exc).__name__, "errorMessage": str(exc)}}
        conn.send_bytes(json.dumps(reply).encode())


@dataclass(slots=True)
class _Sandbox:
    process: Any
    conn: Connection
    busy: bool = True
    loaded: set[tuple[str, str]] = field(default_factory=set)
    idle_since_s: float = 0.0
    start_ms: float = 0.0

    def kill(self) -> None:
        self.conn.close()
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)


class LocalFunctionPool:
    """Lambda on this machine: spawned sandbox processes running deploy/lambda/handler.py."""

    name = "local"

    def __init__(
        self,
        config: ServerlessConfig,
        *,
        pricing: LambdaPricing | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.memory_mb = config.memory_mb
        self.pricing = pricing if pricing is not None else _load_pricing()
        self.handler_path = Path(config.handler_path or DEFAULT_HANDLER_PATH)
        if not self.handler_path.is_file():
            raise CloudError(f"the Lambda handler {self.handler_path} does not exist")
        self._clock = clock
        self._context = multiprocessing.get_context("spawn")
        self._sandboxes: list[_Sandbox] = []
        self.observed = PoolStats(cold_start_ms=self.pricing.cold_start_ms)

    # sandboxes -------------------------------------------------------------------------

    def _reap_idle(self) -> None:
        now_s = self._clock()
        for box in [b for b in self._sandboxes if not b.busy]:
            if now_s - box.idle_since_s > self.config.keep_warm_s or not box.process.is_alive():
                self._sandboxes.remove(box)
                box.kill()

    def _take(self, key: tuple[str, str]) -> _Sandbox | None:
        """An idle sandbox, one that already holds `key` first (a warm start)."""
        self._reap_idle()
        idle = [b for b in self._sandboxes if not b.busy]
        box = next((b for b in idle if key in b.loaded), idle[0] if idle else None)
        if box is not None:
            box.busy = True
        return box

    async def _spawn(self) -> _Sandbox:
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=_sandbox_main, args=(child, str(self.handler_path)), daemon=True
        )
        box = _Sandbox(process=process, conn=parent)
        self._sandboxes.append(box)  # holds the slot while it starts
        started = time.perf_counter()
        try:
            process.start()
            child.close()
            ready = await asyncio.wait_for(asyncio.to_thread(parent.recv_bytes), 60.0)
            if ready != b"ready":
                raise CloudError(f"sandbox answered {ready!r} instead of ready")
        except (OSError, EOFError, TimeoutError) as exc:
            self._discard(box)
            raise CloudError(f"a local function sandbox failed to start: {exc!r}") from exc
        box.start_ms = (time.perf_counter() - started) * 1000.0
        return box

    def _discard(self, box: _Sandbox) -> None:
        if box in self._sandboxes:
            self._sandboxes.remove(box)
        box.kill()

    # invoke ------------------------------------------------------------------------------

    async def invoke(self, event: Mapping[str, Any]) -> Invocation:
        body = json.dumps(event).encode()
        limit = self.pricing.max_sync_payload_bytes
        if len(body) > limit:
            raise PayloadTooLarge(f"request payload {len(body)} bytes is over {limit} bytes")
        model, key = str(event.get("model", "")), (str(event["model"]), str(event["artifact"]))
        box = self._take(key)
        if box is None and len(self._sandboxes) >= self.config.concurrency:
            raise Throttled(f"all {self.config.concurrency} sandboxes are busy")
        self.observed.started(model, self._clock())
        started = time.perf_counter()
        invocation: Invocation | None = None
        try:
            fresh = box is None
            box = box if box is not None else await self._spawn()
            invocation = await self._run(box, body, key, fresh)
            return invocation
        finally:
            wall_ms = (time.perf_counter() - started) * 1000.0
            self.observed.finished(model, wall_ms, invocation)
            if box is not None and box in self._sandboxes:
                box.busy = False
                box.idle_since_s = self._clock()

    async def _run(
        self, box: _Sandbox, body: bytes, key: tuple[str, str], fresh: bool
    ) -> Invocation:
        request_id = str(uuid.uuid4())
        try:
            box.conn.send_bytes(body)
            raw = await asyncio.wait_for(
                asyncio.to_thread(box.conn.recv_bytes), self.config.timeout_s
            )
        except TimeoutError as exc:
            self._discard(box)
            raise FunctionError(
                "Sandbox.Timedout", f"Task timed out after {self.config.timeout_s:.2f} seconds"
            ) from exc
        except (OSError, EOFError) as exc:
            self._discard(box)
            raise FunctionError("Runtime.ExitError", f"the sandbox exited: {exc!r}") from exc
        reply = json.loads(raw)
        if "error" in reply:
            raise FunctionError(reply["error"]["errorType"], reply["error"]["errorMessage"])
        result = reply["ok"]
        used_mb = float(result.get("max_memory_used_mb", 0.0))
        if used_mb > self.memory_mb:
            self._discard(box)
            raise FunctionError(
                "Runtime.OutOfMemory",
                f"memory size exceeded: used {used_mb:.0f} MB of {self.memory_mb} MB",
            )
        if len(raw) > self.pricing.max_sync_payload_bytes:
            raise FunctionError(
                "Function.ResponseSizeTooLarge",
                f"response payload {len(raw)} bytes is over "
                f"{self.pricing.max_sync_payload_bytes} bytes",
            )
        box.loaded.add(key)
        init_ms = float(result.get("init_ms", 0.0)) + (box.start_ms if fresh else 0.0)
        duration_ms = float(result.get("handler_ms", 0.0))
        billed_ms = _billed_ms(duration_ms + init_ms, self.pricing.billing_granularity_ms)
        return Invocation(
            request_id=request_id,
            result=result,
            duration_ms=duration_ms,
            init_ms=init_ms,
            billed_ms=billed_ms,
            memory_mb=self.memory_mb,
            max_memory_used_mb=used_mb,
            cost_usd=self.pricing.charge_usd(billed_ms, self.memory_mb, self.config.arm),
        )

    async def warm(self, model: str, artifact: str, count: int) -> int:
        """Load `model` in up to `count` sandboxes before a surge (MArk's concurrent pings).
        Returns how many warmed; pings are billed like any invocation."""
        pings = [
            self.invoke({"model": model, "artifact": artifact, "warm": True})
            for _ in range(min(count, self.config.concurrency))
        ]
        results = await asyncio.gather(*pings, return_exceptions=True)
        return sum(isinstance(r, Invocation) for r in results)

    def profile(self, model: str, default_warm_ms: float) -> ServerlessProfile:
        self._reap_idle()
        idle = [b for b in self._sandboxes if not b.busy]
        return ServerlessProfile(
            warm_ms=self.observed.warm_ms.get(model, default_warm_ms),
            cold_start_ms=self.observed.cold_start_ms,
            idle_warm=sum(1 for b in idle if any(k[0] == model for k in b.loaded)),
            free_slots=len(idle) + self.config.concurrency - len(self._sandboxes),
        )

    async def close(self) -> None:
        boxes, self._sandboxes = self._sandboxes, []
        for box in boxes:
            await asyncio.to_thread(box.kill)


# ---- AWS Lambda ---------------------------------------------------------------------------

_REPORT_FIELDS = {
    "duration_ms": re.compile(r"(?<!Billed )(?<!Init )Duration: ([\d.]+) ms"),
    "billed_ms": re.compile(r"Billed Duration: ([\d.]+) ms"),
    "memory_mb": re.compile(r"Memory Size: (\d+) MB"),
    "max_memory_used_mb": re.compile(r"Max Memory Used: (\d+) MB"),
    "init_ms": re.compile(r"Init Duration: ([\d.]+) ms"),
}


def _report(log_result: str | None) -> dict[str, float]:
    """The numbers of the REPORT line in Lambda's base64 log tail."""
    if not log_result:
        return {}
    text = base64.b64decode(log_result).decode(errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith("REPORT ")), "")
    return {
        key: float(match.group(1))
        for key, pattern in _REPORT_FIELDS.items()
        if (match := pattern.search(line))
    }


class LambdaPool:
    """AWS Lambda (or the local pool's Invoke API, by `endpoint_url`) through boto3."""

    name = "lambda"

    def __init__(
        self,
        config: ServerlessConfig,
        *,
        endpoint_url: str | None = None,
        pricing: LambdaPricing | None = None,
        client: Any | None = None,
        unsigned: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.memory_mb = config.memory_mb
        self.pricing = pricing if pricing is not None else _load_pricing()
        retries = {"mode": "standard", "total_max_attempts": config.api_max_attempts}
        # The local pool's Invoke API needs no credentials: unsigned requests reach it.
        signing = {"signature_version": UNSIGNED} if unsigned else {}
        self.client = (
            client
            if client is not None
            else boto3.session.Session().client(
                "lambda",
                region_name=config.region,
                endpoint_url=endpoint_url or config.endpoint_url,
                config=BotoConfig(retries=retries, read_timeout=config.timeout_s + 5, **signing),
            )
        )
        self._clock = clock
        self.observed = PoolStats(cold_start_ms=self.pricing.cold_start_ms)

    async def invoke(self, event: Mapping[str, Any]) -> Invocation:
        body = json.dumps(event).encode()
        limit = self.pricing.max_sync_payload_bytes
        if len(body) > limit:
            raise PayloadTooLarge(f"request payload {len(body)} bytes is over {limit} bytes")
        model = str(event.get("model", ""))
        self.observed.started(model, self._clock())
        started = time.perf_counter()
        invocation: Invocation | None = None
        try:
            invocation = await self._invoke(body)
            return invocation
        finally:
            wall_ms = (time.perf_counter() - started) * 1000.0
            self.observed.finished(model, wall_ms, invocation)

    async def _invoke(self, body: bytes) -> Invocation:
        try:
            answer = await asyncio.to_thread(
                self.client.invoke,
                FunctionName=self.config.function_name,
                InvocationType="RequestResponse",
                LogType="Tail",
                Payload=body,
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            message = exc.response.get("Error", {}).get("Message", "")
            if code == "TooManyRequestsException":
                raise Throttled(f"Lambda throttled the invocation: {message}") from exc
            if code in {"RequestTooLargeException", "RequestEntityTooLargeException"}:
                raise PayloadTooLarge(message) from exc
            raise CloudError(f"Lambda Invoke failed ({code}): {message}") from exc
        except BotoCoreError as exc:
            raise CloudError(f"Lambda Invoke failed: {exc}") from exc
        payload = await asyncio.to_thread(answer["Payload"].read)
        result = json.loads(payload) if payload else {}
        if answer.get("FunctionError"):
            raise FunctionError(
                str(result.get("errorType", answer["FunctionError"])),
                str(result.get("errorMessage", payload[:200])),
            )
        report = _report(answer.get("LogResult"))
        duration_ms = report.get("duration_ms", float(result.get("handler_ms", 0.0)))
        init_ms = report.get("init_ms", 0.0)
        memory_mb = int(report.get("memory_mb", self.memory_mb))
        billed_ms = report.get(
            "billed_ms", _billed_ms(duration_ms + init_ms, self.pricing.billing_granularity_ms)
        )
        headers = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        return Invocation(
            request_id=str(headers.get("x-amzn-requestid", "")),
            result=result,
            duration_ms=duration_ms,
            init_ms=init_ms,
            billed_ms=billed_ms,
            memory_mb=memory_mb,
            max_memory_used_mb=report.get("max_memory_used_mb", 0.0),
            cost_usd=self.pricing.charge_usd(billed_ms, memory_mb, self.config.arm),
        )

    def profile(self, model: str, default_warm_ms: float) -> ServerlessProfile:
        """Lambda does not say how many sandboxes are warm: estimate them as the model's peak
        concurrency seen within `keep_warm_s`, less what is in flight now."""
        in_flight = self.observed.in_flight.get(model, 0)
        peak, at_s = self.observed.recent_peak.get(model, (0, 0.0))
        warm = peak if self._clock() - at_s <= self.config.keep_warm_s else 0
        return ServerlessProfile(
            warm_ms=self.observed.warm_ms.get(model, default_warm_ms),
            cold_start_ms=self.observed.cold_start_ms,
            idle_warm=max(warm - in_flight, 0),
            free_slots=max(self.config.concurrency - self.observed.total_in_flight(), 0),
        )

    async def close(self) -> None:
        await asyncio.to_thread(self.client.close)


# ---- the Invoke API in front of the local pool --------------------------------------------


def _lambda_error(status: int, error_type: str, message: str) -> web.Response:
    return web.json_response(
        {"Type": "User", "message": message},
        status=status,
        headers={"x-amzn-ErrorType": error_type},
    )


def _function_name(raw: str) -> str:
    """`NAME`, `NAME:QUALIFIER` or `arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]`."""
    parts = raw.split(":")
    if raw.startswith("arn:") and len(parts) >= 7:
        return parts[6]
    return parts[0]


def _log_tail(invocation: Invocation) -> str:
    init = f"Init Duration: {invocation.init_ms:.2f} ms\t" if invocation.cold_start else ""
    text = (
        f"START RequestId: {invocation.request_id} Version: $LATEST\n"
        f"END RequestId: {invocation.request_id}\n"
        f"REPORT RequestId: {invocation.request_id}\tDuration: {invocation.duration_ms:.2f} ms\t"
        f"Billed Duration: {invocation.billed_ms:.0f} ms\tMemory Size: {invocation.memory_mb} MB\t"
        f"Max Memory Used: {invocation.max_memory_used_mb:.0f} MB\t{init}\n"
    )
    return base64.b64encode(text.encode()).decode()


class InvokeServer:
    """Lambda's Invoke API on loopback in front of a LocalFunctionPool (RequestResponse and
    DryRun invocation types; payload limit 413, throttling 429, unknown function 404, function
    errors as 200 with `X-Amz-Function-Error`, as AWS answers them)."""

    def __init__(
        self, pool: LocalFunctionPool, *, host: str | None = None, port: int | None = None
    ) -> None:
        """Listens on `host`:`port`, by default `serverless.local_host` and `local_port` (0:
        a free port; `start()` returns the URL)."""
        self.pool = pool
        self.host = host if host is not None else pool.config.local_host
        self.port = port if port is not None else pool.config.local_port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> str:
        app = web.Application(client_max_size=self.pool.pricing.max_sync_payload_bytes + 1)
        app.router.add_post(INVOKE_PATH, self._invoke)
        # A refused oversized body is not drained for aiohttp's default 10 s.
        self._runner = web.AppRunner(app, access_log=None, lingering_time=0.5)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = int(sock.getsockname()[1])
        await web.SockSite(self._runner, sock).start()
        return self.url

    async def _invoke(self, request: web.Request) -> web.Response:
        limit = self.pool.pricing.max_sync_payload_bytes
        name = _function_name(request.match_info["name"])
        if name != self.pool.config.function_name:
            return _lambda_error(404, "ResourceNotFoundException", f"Function not found: {name}")
        kind = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        if kind not in {"RequestResponse", "DryRun"}:
            return _lambda_error(
                400, "InvalidParameterValueException", f"unsupported invocation type {kind}"
            )
        too_large = _lambda_error(
            413,
            "RequestTooLargeException",
            f"Request must be smaller than {limit} bytes for the InvokeFunction operation",
        )
        if request.content_length is not None and request.content_length > limit:
            too_large.force_close()  # the unread body must not be taken for the next request
            return too_large
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return too_large
        if kind == "DryRun":
            return web.Response(status=204)
        try:
            event = json.loads(body or b"{}")
            invocation = await self.pool.invoke(event)
        except json.JSONDecodeError:
            return _lambda_error(400, "InvalidRequestContentException", "Could not parse JSON")
        except PayloadTooLarge:
            return too_large
        except Throttled as exc:
            return _lambda_error(429, "TooManyRequestsException", str(exc))
        except FunctionError as exc:
            return web.json_response(
                {"errorType": exc.error_type, "errorMessage": str(exc), "stackTrace": []},
                headers={"X-Amz-Function-Error": "Unhandled"},
            )
        except (KeyError, TypeError) as exc:
            return web.json_response(
                {"errorType": "KeyError", "errorMessage": f"bad event: {exc!r}"},
                headers={"X-Amz-Function-Error": "Unhandled"},
            )
        headers = {"X-Amz-Executed-Version": "$LATEST", "x-amzn-RequestId": invocation.request_id}
        if request.headers.get("X-Amz-Log-Type") == "Tail":
            headers["X-Amz-Log-Result"] = _log_tail(invocation)
        return web.json_response(dict(invocation.result), headers=headers)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


# ---- what the front end calls -------------------------------------------------------------


def spill_event(model: Model, request: InferRequest) -> dict[str, Any]:
    """The handler's event for one spilled request (the v2 request as JSON)."""
    body, _ = encode_v2_request(request)
    return {"model": model.name, "artifact": model.backend.artifact, "request": json.loads(body)}


async def infer(
    pool: ServerlessPool, model: Model, request: InferRequest
) -> tuple[InferResponse, Invocation]:
    """Answer `request` through the pool; the invocation carries the cost for the ledger.
    Raises InputRejected when the function found the request does not fit the model."""
    invocation = await pool.invoke(spill_event(model, request))
    rejected = invocation.result.get("rejected")
    if rejected:
        raise InputRejected(str(rejected), invocation)
    response = invocation.result.get("response")
    if not isinstance(response, dict):
        raise FunctionError("Mark.NoResponse", "the handler returned no v2 response")
    return parse_v2_response(json.dumps(response).encode()), invocation


def build_pool(
    config: ServerlessConfig, *, local_endpoint_url: str | None = None
) -> ServerlessPool | None:
    """The pool a front-end process uses: Lambda itself, or the control plane's local pool
    through its Invoke API at `local_endpoint_url`; None when spill is off."""
    if config.provider == "none":
        return None
    if config.provider == "local":
        if local_endpoint_url is None:
            raise CloudError("the local serverless pool needs its Invoke API URL")
        return LambdaPool(config, endpoint_url=local_endpoint_url, unsigned=True)
    return LambdaPool(config)
