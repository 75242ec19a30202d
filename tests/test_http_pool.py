"""The lean HTTP client of the inference hot path (mark/adapters/http_pool.py) against real TCP
servers on loopback that answer as the test scripts them: keep-alive reuse, the instance closing
an idle connection, `Connection: close`, chunked answers, the v2 binary header and Retry-After,
refusals,
timeouts and answers cut short."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from mark.adapters.http_pool import HttpError, HttpPool

Handler = Callable[[bytes, int], bytes | None]  # (request body, connection's call n) -> answer


def answer(body: bytes, *extra: str) -> bytes:
    headers = "".join(f"{h}\r\n" for h in extra)
    return (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"{headers}\r\n"
    ).encode() + body


class Server:
    """Reads one HTTP request at a time per connection (Content-Length bodies) and writes what
    the handler returns; None closes the connection without answering."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.request_lines: list[bytes] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        calls = 0
        # The client hanging up ends the connection as the handler returning None does.
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.request_lines.append(head.split(b"\r\n", 1)[0])
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                body = await reader.readexactly(length)
                out = self.handler(body, calls)
                calls += 1
                if out is None:
                    break
                writer.write(out)
                await writer.drain()
        writer.close()


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[tuple[Server, str]]:
    server = Server(handler)
    srv = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield server, f"http://127.0.0.1:{port}"
    finally:
        for w in server.writers:
            w.close()
        srv.close()


async def test_calls_reuse_one_keep_alive_connection_and_get_each_body() -> None:
    async with serving(lambda body, _n: answer(b'{"echo": ' + body + b"}")) as (server, url):
        pool = HttpPool(limit=8, timeout_s=5)
        for i in range(20):
            got = await pool.post(url, "/v2/models/m/infer", str(i).encode())
            assert (got.status, got.body) == (200, b'{"echo": %d}' % i)
        await pool.close()
    assert server.connections == 1


async def test_an_endpoint_under_a_path_prefix_is_called_under_it() -> None:
    async with serving(lambda _b, _n: answer(b"{}")) as (server, url):
        pool = HttpPool(limit=8, timeout_s=5)
        for endpoint in (f"{url}/fleet/i3", f"{url}/fleet/i3/", url):
            assert (await pool.post(endpoint, "/v2/repository/index", b"{}")).status == 200
        await pool.close()
    assert server.request_lines == [b"POST /fleet/i3/v2/repository/index HTTP/1.1"] * 2 + [
        b"POST /v2/repository/index HTTP/1.1"
    ]
    assert server.connections == 1  # one host and port: one connection


async def test_an_idle_connection_the_instance_closed_is_replaced_without_an_error() -> None:
    async with serving(lambda _b, _n: answer(b"{}")) as (server, url):
        pool = HttpPool(limit=8, timeout_s=5)
        assert (await pool.post(url, "/x", b"1")).status == 200
        for w in server.writers:  # the instance's keep-alive timeout
            w.close()
        await asyncio.sleep(0.05)
        assert (await pool.post(url, "/x", b"2")).status == 200
        await pool.close()
    assert server.connections == 2


async def test_a_reused_connection_dropped_before_answering_is_retried_once() -> None:
    # The instance drops the second call on the first connection (a race with its keep-alive
    # timeout): resent on a fresh connection, the caller sees one answer.
    def handler(_body: bytes, n: int) -> bytes | None:
        return None if n == 1 else answer(b"{}")

    async with serving(handler) as (server, url):
        pool = HttpPool(limit=8, timeout_s=5)
        await pool.post(url, "/x", b"1")
        assert (await pool.post(url, "/x", b"2")).status == 200
        await pool.close()
    assert server.connections == 2


async def test_connection_close_answers_and_chunked_bodies() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b'5\r\n{"a":\r\n3\r\n 1}\r\n0\r\n\r\n'
    )
    async with serving(lambda _b, _n: chunked) as (server, url):
        pool = HttpPool(limit=8, timeout_s=5)
        for _ in range(3):
            got = await pool.post(url, "/x", b"{}")
            assert got.body == b'{"a": 1}'
        await pool.close()
    assert server.connections == 3  # closed after each answer, as the instance asked


async def test_binary_header_length_and_error_statuses_come_back() -> None:
    def handler(body: bytes, _n: int) -> bytes:
        if body == b"bad":
            return b'HTTP/1.1 400 Bad Request\r\nContent-Length: 13\r\n\r\n{"error":"x"}'
        if body == b"later":  # the worker's refusal of a model it cannot load now
            return b"HTTP/1.1 503 Unavailable\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n"
        return answer(b'{"outputs":[]}XXXX', "Inference-Header-Content-Length: 14")

    async with serving(handler) as (_server, url):
        pool = HttpPool(limit=8, timeout_s=5)
        got = await pool.post(url, "/x", b"ok")
        assert (got.status, got.header_length) == (200, b"14")
        bad = await pool.post(url, "/x", b"bad")
        assert (bad.status, bad.body, bad.header_length) == (400, b'{"error":"x"}', None)
        later = await pool.post(url, "/x", b"later")
        assert (later.status, later.retry_after, got.retry_after) == (503, b"7", None)
        await pool.close()


async def test_refused_timed_out_and_cut_short_calls_raise_http_error() -> None:
    pool = HttpPool(limit=8, timeout_s=0.3)
    async with serving(lambda _b, _n: answer(b"{}")) as (_server, url):
        pass  # closed: nothing listens on that port any more
    with pytest.raises(HttpError, match="cannot connect"):
        await pool.post(url, "/x", b"{}")

    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read(1 << 16)
            await asyncio.sleep(5)
        finally:  # cancelled with the test's loop: the writer must not outlive it
            writer.close()

    srv = await asyncio.start_server(never, "127.0.0.1", 0)
    slow = f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
    with pytest.raises(HttpError, match="no answer within"):
        await pool.post(slow, "/x", b"{}")
    srv.close()

    cut = b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial'
    async with serving(lambda _b, _n: cut) as (_server, url):
        task = asyncio.create_task(pool.post(url, "/x", b"{}"))
        await asyncio.sleep(0.1)
        for w in _server.writers:
            w.close()
        with pytest.raises(HttpError, match="closed before the answer was complete"):
            await task
    await pool.close()


async def test_idle_connections_an_instance_closed_are_forgotten() -> None:
    async with serving(lambda _b, _n: answer(b"{}")) as (server, url):
        pool = HttpPool(limit=8, timeout_s=5)
        await asyncio.gather(*(pool.post(url, "/x", b"1") for _ in range(3)))
        assert server.connections == 3
        for w in server.writers:  # the instance goes away
            w.close()
        await asyncio.sleep(0.05)
        assert pool._idle[pool._key(url)] == []  # nothing held for an instance that is gone
        await pool.close()
