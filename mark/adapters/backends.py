"""The front end's HTTP client to instances, speaking each model's backend protocol (KServe v2
JSON, or TF Serving REST), so any v2 server (Triton, MLServer, KServe runtimes, `mark worker`)
or a TF Serving instance can serve a model. Inference calls go through the lean keep-alive pool
of mark/adapters/http_pool.py; health checks and metadata through one pooled aiohttp session.

Failures are split by what the caller should do: `BackendUnavailable` (connection refused or
reset, timeout, 5xx, an unparseable answer) means try another instance and eject this one;
`ModelNotServed` (404: the instance does not have the model; 503 with Retry-After: it cannot
load it now, mark/apps/worker/server.py) means this instance lacks this one model, and is fine
for its others: try another instance for the model alone; `BackendRejected` (other 4xx) means
the request itself is at fault and goes back to the client.

Per call, the hot path reuses the request line and headers of each (endpoint, model).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import aiohttp

from mark.adapters.http_pool import HttpError, HttpPool
from mark.core.protocol import (
    HEADER_LENGTH,
    BackendError,
    InferRequest,
    InferResponse,
    encode_tf_request,
    encode_v2_request,
    parse_tf_response,
    parse_v2_response,
)
from mark.core.types import Protocol

__all__ = [
    "BackendClient",
    "BackendUnavailable",
    "BackendRejected",
    "ModelNotServed",
    "new_session",
]


class BackendUnavailable(Exception):
    """The instance could not answer; retry elsewhere (inference is idempotent)."""


class ModelNotServed(BackendUnavailable):
    """The instance is up but does not have this model in memory and will not load it now:
    404 (it does not know the model) or 503 with Retry-After (no room beside protected models,
    an artifact that failed to load). `retry_after_s` is the latter's, None for a 404."""

    def __init__(self, reason: str, retry_after_s: float | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class BackendRejected(Exception):
    """The instance refused the request as malformed (4xx): the client's fault."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def new_session(*, pool_size: int, timeout_s: float) -> aiohttp.ClientSession:
    """A keep-alive connection pool to the instances (loopback or VPC: no proxies, no cookies)."""
    connector = aiohttp.TCPConnector(
        limit=pool_size, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=60
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        skip_auto_headers=("User-Agent",),
    )


def _message(body: bytes) -> str:
    text = body.decode("utf-8", "replace")[:500]
    return text or "no detail"


class BackendClient:
    def __init__(self, session: aiohttp.ClientSession, http: HttpPool) -> None:
        self.session = session
        self.http = http
        self._paths: dict[tuple[str, Protocol], str] = {}

    def _infer_path(self, protocol: Protocol, model_name: str) -> str:
        key = (model_name, protocol)
        path = self._paths.get(key)
        if path is None:
            if protocol == "tfserving":
                path = f"/v1/models/{model_name}:predict"
            else:
                path = f"/v2/models/{model_name}/infer"
            self._paths[key] = path
        return path

    async def _post(self, endpoint: str, path: str, body: bytes) -> tuple[bytes, int | None]:
        try:
            answer = await self.http.post(endpoint, path, body)
        except HttpError as exc:
            raise BackendUnavailable(f"{endpoint}{path}: {exc}") from exc
        status, payload = answer.status, answer.body
        if status == 404 or (status == 503 and answer.retry_after is not None):
            raise ModelNotServed(
                f"{endpoint}{path}: HTTP {status}: {_error_text(payload)}",
                None if status == 404 else _seconds(answer.retry_after),
            )
        if 400 <= status < 500 and status not in (408, 429):
            raise BackendRejected(status, _error_text(payload))
        if status != 200:
            raise BackendUnavailable(f"{endpoint}{path}: HTTP {status}: {_message(payload)}")
        raw = answer.header_length
        try:
            return payload, int(raw) if raw is not None else None
        except ValueError as exc:
            raise BackendUnavailable(f"{endpoint}{path}: bad {HEADER_LENGTH}: {raw!r}") from exc

    async def infer(
        self,
        endpoint: str,
        protocol: Protocol,
        model_name: str,
        request: InferRequest,
        output_names: Sequence[str] = (),
    ) -> InferResponse:
        """One inference call; raises BackendUnavailable or BackendRejected."""
        path = self._infer_path(protocol, model_name)
        try:
            if protocol == "tfserving":
                payload, _ = await self._post(endpoint, path, encode_tf_request(request))
                return parse_tf_response(payload, output_names)
            body, _ = encode_v2_request(request)
            payload, header_length = await self._post(endpoint, path, body)
            return parse_v2_response(payload, header_length)
        except BackendError as exc:
            raise BackendUnavailable(str(exc)) from exc

    async def infer_v2_raw(
        self, endpoint: str, model_name: str, body: bytes
    ) -> tuple[bytes, int | None]:
        """Forward a client's v2 JSON body as is; the instance's answer comes back unparsed
        (its body and Inference-Header-Content-Length). Only a body that is not a JSON object
        is refused here (BackendUnavailable): parsing the rest is the client's business."""
        payload, header_length = await self._post(
            endpoint, self._infer_path("kserve-v2", model_name), body
        )
        if not payload.lstrip()[:1] == b"{":
            raise BackendUnavailable(f"{endpoint}: the v2 answer is not a JSON object")
        return payload, header_length

    async def ready(self, endpoint: str, timeout_s: float) -> bool:
        """GET /v2/health/ready (v2) answered 200 within `timeout_s`."""
        try:
            async with asyncio.timeout(timeout_s):
                async with self.session.get(f"{endpoint}/v2/health/ready") as resp:
                    await resp.read()
                    return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def tf_ready(self, endpoint: str, model_name: str, timeout_s: float) -> bool:
        """TF Serving's model status endpoint answered 200."""
        try:
            async with asyncio.timeout(timeout_s):
                async with self.session.get(f"{endpoint}/v1/models/{model_name}") as resp:
                    await resp.read()
                    return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def metadata(self, endpoint: str, model_name: str, timeout_s: float) -> dict[str, Any]:
        """The v2 model metadata document; raises BackendUnavailable."""
        try:
            async with asyncio.timeout(timeout_s):
                async with self.session.get(f"{endpoint}/v2/models/{model_name}") as resp:
                    if resp.status != 200:
                        raise BackendUnavailable(f"metadata: HTTP {resp.status}")
                    doc = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise BackendUnavailable(f"metadata: {exc}") from exc
        if not isinstance(doc, dict):
            raise BackendUnavailable("metadata is not a JSON object")
        return doc


def _seconds(retry_after: bytes | None) -> float:
    """A Retry-After in seconds (an HTTP date, or garbage, counts as 1 s)."""
    try:
        return max(float(retry_after or b"1"), 0.0)
    except ValueError:
        return 1.0


def _error_text(payload: bytes) -> str:
    """The `error` field of a v2 error body, else the body text."""
    try:
        doc = json.loads(payload)
    except ValueError:
        return _message(payload)
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return str(doc["error"])
    return _message(payload)
