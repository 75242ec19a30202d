"""A lean keep-alive HTTP/1.1 client for the calls a front end makes most: POST a body to an
instance and read its answer (inference, and the repository index read on every fleet sync:
mark/adapters/repository.py).

Why not aiohttp here: its client costs ~300 us of CPU per call on the 2-core benchmark VM, more
than half of the front end's whole per-request budget, while one asyncio protocol per connection
with httptools' parser (Sanic's own dependency) does the same call for ~75 us
(bench/bench_frontend.py). Health checks and metadata stay on aiohttp: they are rare.
An endpoint may carry a path prefix (`http://host:port/prefix`): every path is under it.

What it does and does not do: HTTP/1.1 with Content-Length or chunked answers (every v2 and TF
Serving server answers so), plain TCP or TLS by the endpoint's scheme, at most `limit` calls in
flight per process, idle connections reused per endpoint. A call that fails on a reused
connection before any byte of the answer arrived is tried once more on a fresh connection: the
instance closing an idle keep-alive connection is not the instance failing (inference is
idempotent, so resending is safe). Every other failure is an `HttpError` for the caller to
retry elsewhere.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

__all__ = ["HttpError", "HttpAnswer", "HttpPool"]

_HEADER = b"inference-header-content-length"
_RETRY_AFTER = b"retry-after"
_TIMED_OUT = "mark: instance call timed out"


class HttpError(Exception):
    """The call got no complete HTTP answer: refused, reset, closed early, garbled, timed out."""


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    body: bytes
    header_length: bytes | None  # the v2 binary extension's Inference-Header-Content-Length
    # A refusal's Retry-After (the worker's 503 for a model it cannot load now:
    # mark/apps/worker/server.py), None on a plain answer.
    retry_after: bytes | None = None


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one call at a time."""

    def __init__(self, key: tuple[str, int, bool]) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[HttpAnswer] | None = None
        self.idle_in: list[_Connection] | None = None  # the pool's idle list holding it
        self.closed = False
        self.received = False
        self.reused = False
        self._status = 0
        self._chunks: list[bytes] = []
        self._header_length: bytes | None = None
        self._retry_after: bytes | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(HttpError(f"malformed HTTP answer: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.idle_in is not None:  # closed while idle (the instance left): forget it
            self.idle_in.remove(self)
            self.idle_in = None
        self._fail(HttpError(f"connection closed before the answer was complete ({exc or 'EOF'})"))

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == len(_HEADER) and name.lower() == _HEADER:
            self._header_length = value
        elif len(name) == len(_RETRY_AFTER) and name.lower() == _RETRY_AFTER:
            self._retry_after = value

    def on_headers_complete(self) -> None:
        self._status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        answer = HttpAnswer(
            self._status, b"".join(self._chunks), self._header_length, self._retry_after
        )
        self._chunks = []
        self._header_length = None
        self._retry_after = None
        if not self.parser.should_keep_alive():
            self.close()
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)

    # the call

    def send(self, data: bytes) -> asyncio.Future[HttpAnswer]:
        assert self.transport is not None
        waiter: asyncio.Future[HttpAnswer] = asyncio.get_running_loop().create_future()
        self.waiter = waiter
        self.received = False
        self.transport.write(data)
        return waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, error: HttpError) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)


class HttpPool:
    """Keep-alive connections to many endpoints ("http://host:port" or "https://..."); must be
    used from one event loop."""

    def __init__(self, *, limit: int, timeout_s: float) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._timeout_s = timeout_s
        self._idle: dict[tuple[str, int, bool], list[_Connection]] = {}
        self._keys: dict[str, tuple[str, int, bool]] = {}
        self._heads: dict[tuple[str, str, str], bytes] = {}
        self._tls: ssl.SSLContext | None = None

    def _key(self, endpoint: str) -> tuple[str, int, bool]:
        key = self._keys.get(endpoint)
        if key is None:
            parts = urlsplit(endpoint)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise HttpError(f"not an http(s) endpoint: {endpoint!r}")
            tls = parts.scheme == "https"
            key = (parts.hostname, parts.port or (443 if tls else 80), tls)
            self._keys[endpoint] = key
        return key

    def _head(self, endpoint: str, path: str, content_type: str) -> bytes:
        found = self._heads.get((endpoint, path, content_type))
        if found is None:
            host, port, _tls = self._key(endpoint)
            base = urlsplit(endpoint).path.rstrip("/")  # an endpoint under a path prefix
            found = (
                f"POST {base}{path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: "
            ).encode("latin-1")
            self._heads[(endpoint, path, content_type)] = found
        return found

    async def post(
        self,
        endpoint: str,
        path: str,
        body: bytes,
        content_type: str = "application/json",
        headers: bytes = b"",
    ) -> HttpAnswer:
        """POST `body` to endpoint + path, with `headers` (lines, each ending in CRLF) besides
        the usual; raises HttpError when no complete answer came."""
        head = self._head(endpoint, path, content_type)
        data = b"%b%d\r\n%b\r\n%b" % (head, len(body), headers, body)
        key = self._key(endpoint)
        async with self._slots:
            # A timer per call that cancels it (its connection is then closed, not reused),
            # not asyncio.timeout: a third of the cost on this path.
            loop = asyncio.get_running_loop()
            call = asyncio.current_task()
            assert call is not None
            timer = loop.call_at(loop.time() + self._timeout_s, call.cancel, _TIMED_OUT)
            try:
                return await self._call(key, data)
            except asyncio.CancelledError as exc:
                if exc.args != (_TIMED_OUT,):
                    raise
                if call.uncancel() > 0:  # cancelled from outside as well: let that through
                    raise
                raise HttpError(f"no answer within {self._timeout_s:g} s") from None
            finally:
                timer.cancel()

    async def _call(self, key: tuple[str, int, bool], data: bytes) -> HttpAnswer:
        conn = await self._acquire(key)
        try:
            answer = await conn.send(data)
        except HttpError:
            conn.close()
            if not (conn.reused and not conn.received):
                raise
            conn = await self._connect(key)  # the instance closed an idle connection
            try:
                answer = await conn.send(data)
            except BaseException:
                conn.close()
                raise
        except BaseException:  # cancelled or timed out mid-call: the connection is unusable
            conn.close()
            raise
        if not conn.closed:
            conn.reused = True
            conn.idle_in = self._idle.setdefault(key, [])
            conn.idle_in.append(conn)
        return answer

    async def _acquire(self, key: tuple[str, int, bool]) -> _Connection:
        idle = self._idle.get(key)
        if idle:
            conn = idle.pop()  # idle connections that closed have left the list already
            conn.idle_in = None
            return conn
        return await self._connect(key)

    async def _connect(self, key: tuple[str, int, bool]) -> _Connection:
        host, port, tls = key
        if tls and self._tls is None:
            self._tls = ssl.create_default_context()
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                lambda: _Connection(key), host, port, ssl=self._tls if tls else None
            )
        except OSError as exc:
            raise HttpError(f"cannot connect to {host}:{port}: {exc}") from exc
        return conn

    async def close(self) -> None:
        for idle in list(self._idle.values()):
            for conn in list(idle):
                conn.close()
        self._idle.clear()
