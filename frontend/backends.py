"""The front end's HTTP client to instances: one pooled aiohttp session speaking each model's
backend protocol (KServe v2 JSON, or TF Serving REST), so any v2 server (Triton, MLServer, KServe
runtimes, `mark worker`) or a TF Serving instance can serve a model.

Failures are split by what the caller should do: `BackendUnavailable` (connection refused or
reset, timeout, 5xx, an unparseable answer) means try another instance and eject this one;
`BackendRejected` (4xx) means the request itself is at fault and goes back to the client.

Per call, the hot path reuses the parsed URL of each (endpoint, model) and one header mapping;
aiohttp's connector keeps connections alive and sets TCP_NODELAY on them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import aiohttp
from yarl import URL

from frontend.protocol import (
    HEADER_LENGTH,
    BackendError,
    InferRequest,
    InferResponse,
    encode_tf_request,
    encode_v2_request,
    parse_tf_response,
    parse_v2_response,
)
from mark.types import Protocol

__all__ = ["BackendClient", "BackendUnavailable", "BackendRejected", "new_session"]


class BackendUnavailable(Exception):
    """The instance could not answer; retry elsewhere (inference is idempotent)."""


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


_JSON_HEADERS = {"Content-Type": "application/json"}


class BackendClient:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self._urls: dict[tuple[str, str, Protocol], URL] = {}

    def _infer_url(self, endpoint: str, protocol: Protocol, model_name: str) -> URL:
        key = (endpoint, model_name, protocol)
        url = self._urls.get(key)
        if url is None:
            if protocol == "tfserving":
                url = URL(f"{endpoint}/v1/models/{model_name}:predict")
            else:
                url = URL(f"{endpoint}/v2/models/{model_name}/infer")
            self._urls[key] = url
        return url

    async def _post(self, url: URL, body: bytes) -> tuple[bytes, int | None]:
        try:
            async with self.session.post(url, data=body, headers=_JSON_HEADERS) as resp:
                payload = await resp.read()
                if 400 <= resp.status < 500 and resp.status not in (408, 429):
                    raise BackendRejected(resp.status, _error_text(payload))
                if resp.status != 200:
                    raise BackendUnavailable(f"{url}: HTTP {resp.status}: {_message(payload)}")
                raw = resp.headers.get(HEADER_LENGTH)
                return payload, int(raw) if raw is not None else None
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise BackendUnavailable(f"{url}: {type(exc).__name__}: {exc}") from exc

    async def infer(
        self,
        endpoint: str,
        protocol: Protocol,
        model_name: str,
        request: InferRequest,
        output_names: Sequence[str] = (),
    ) -> InferResponse:
        """One inference call; raises BackendUnavailable or BackendRejected."""
        url = self._infer_url(endpoint, protocol, model_name)
        try:
            if protocol == "tfserving":
                payload, _ = await self._post(url, encode_tf_request(request))
                return parse_tf_response(payload, output_names)
            body, _ = encode_v2_request(request)
            payload, header_length = await self._post(url, body)
            return parse_v2_response(payload, header_length)
        except BackendError as exc:
            raise BackendUnavailable(str(exc)) from exc

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


def _error_text(payload: bytes) -> str:
    """The `error` field of a v2 error body, else the body text."""
    try:
        doc = json.loads(payload)
    except ValueError:
        return _message(payload)
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return str(doc["error"])
    return _message(payload)
