"""`InvokeServer`: Lambda's Invoke HTTP API (`POST /2015-03-31/functions/{name}/invocations`) on
loopback in front of a local pool, so that front-end processes reach the local pool with the
very boto3 client they would use against AWS (`LambdaPool` with `endpoint_url`).
"""

from __future__ import annotations

import base64
import json
import socket

from aiohttp import web

from provisioner.adapters.serverless.local import LocalFunctionPool
from provisioner.adapters.serverless.pool import (
    FunctionError,
    Invocation,
    PayloadTooLarge,
    Throttled,
)

__all__ = ["InvokeServer", "INVOKE_PATH"]

INVOKE_PATH = "/2015-03-31/functions/{name}/invocations"


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
