"""`LocalFunctionPool`: the embedded default serverless pool, Lambda's execution model on this
machine. Each sandbox is a fresh spawned process that imports `deploy/lambda/handler.py`, the
same file that runs on Lambda; a sandbox runs one invocation at a time, keeps what it loaded (a
warm start reuses it), idles out after `keep_warm_s`, and is killed when it passes the function
timeout or its memory size. At most `concurrency` sandboxes exist; an invocation beyond that is
throttled (Lambda's 429). Billing is Lambda's: per request plus GB-seconds of duration (init
included, as AWS bills on-demand functions since August 2025), rounded to 1 ms, from the
catalog's `lambda_pricing.json`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import multiprocessing
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mark.core.config import ServerlessConfig
from mark.core.errors import CloudError
from provisioner.adapters.serverless.pool import (
    FunctionError,
    Invocation,
    PayloadTooLarge,
    PoolStats,
    Throttled,
    billed_duration_ms,
    load_pricing,
    ping_warm,
)
from provisioner.policy.spill import ServerlessProfile

if TYPE_CHECKING:
    from mark.core.catalog import LambdaPricing

__all__ = ["LocalFunctionPool", "DEFAULT_HANDLER_PATH"]

DEFAULT_HANDLER_PATH = Path(__file__).resolve().parents[3] / "deploy" / "lambda" / "handler.py"


def _sandbox_main(conn: Connection, handler_path: str, environment: dict[str, str]) -> None:
    """A sandbox process: set the function's environment, import the handler file, say
    ready, then run one event at a time."""
    os.environ.update(environment)
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
        environment: Mapping[str, str] | None = None,
    ) -> None:
        """`environment`: the function's environment variables, set in each sandbox before
        the handler is imported (as Lambda sets a function's): `AWS_ENDPOINT_URL_S3` points
        the handler's boto3 at the model store's S3 endpoint (`worker.store_endpoint_url`)."""
        self.config = config
        self.environment = dict(environment or {})
        self.memory_mb = config.memory_mb
        self.pricing = pricing if pricing is not None else load_pricing()
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
            target=_sandbox_main,
            args=(child, str(self.handler_path), self.environment),
            daemon=True,
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
        billed_ms = billed_duration_ms(duration_ms + init_ms, self.pricing.billing_granularity_ms)
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

    async def warm(self, model: str, artifact: str, count: int) -> list[Invocation]:
        return await ping_warm(self, model, artifact, count, self.config.concurrency)

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
