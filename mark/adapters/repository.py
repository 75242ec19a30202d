"""The KServe v2 model repository extension as a client (Triton's and MLServer's API, and
`mark worker`'s: mark/core/protocol/repository.py): which models an instance holds, and asking
it to load or unload one. The front end reads the index on its sync and loads a model resident
nowhere for the requests it holds (frontend/residency.py); the control loop loads and unloads
what the placement moves (mark/apps/control/placement_applier.py). Both go through these calls.

Loads and unloads are rare calls off the hot path, so they use an aiohttp session (as health
checks do); the index, read from every instance on every sync of every front end, goes over
the lean inference pool of mark/adapters/http_pool.py. Each call is bounded by its `timeout_s`.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from mark.adapters.http_pool import HttpError, HttpPool
from mark.core.protocol import (
    LOAD_PIN_HEADER,
    NO_ROOM,
    REFUSED_HEADER,
    UNLOAD_IDLE_HEADER,
    index_etag,
)

__all__ = [
    "NO_REPOSITORY_API",
    "IndexRead",
    "IndexUnreadable",
    "LoadFailed",
    "UnloadFailed",
    "read_index",
    "request_load",
    "request_unload",
]

# The index of an instance without the repository API: it holds its Instance.models.
NO_REPOSITORY_API = None
_INDEX_BODY = b'{"ready": true}'


class IndexUnreadable(Exception):
    """The instance did not answer its index usably in time: keep the previous view."""


class LoadFailed(Exception):
    """The instance did not load the model; `reason` is its answer (or the error), `status`
    the HTTP status it answered (None: the call itself failed), `retry_after_s` its
    Retry-After in seconds (None without one), and `no_room` whether it refused for want of
    room beside the models it protects (`Mark-Refused: no-room`: mark/core/protocol/
    repository.py), a refusal for a while rather than a failed load."""

    def __init__(
        self,
        reason: str,
        status: int | None = None,
        *,
        retry_after_s: float | None = None,
        no_room: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after_s = retry_after_s
        self.no_room = no_room


class UnloadFailed(LoadFailed):
    """The instance did not unload the model; `reason` is its answer (or the error)."""


@dataclass(frozen=True, slots=True)
class IndexRead:
    """The models READY on an instance, read from an index body whose tag is `etag`
    (`index_etag`: the next read asks whether it changed)."""

    ready: frozenset[str]
    etag: str


async def read_index(
    http: HttpPool, endpoint: str, timeout_s: float, *, last: IndexRead | None = None
) -> IndexRead | None:
    """The models READY on the instance at `endpoint`, or NO_REPOSITORY_API when it answers
    404 (raises IndexUnreadable for anything else that is not a JSON array). With `last`, the
    read is conditional (`If-None-Match`): an instance whose index did not change answers 304
    and `last` is its answer (mark/core/protocol/repository.py). Over the lean pool
    (mark/adapters/http_pool.py), not aiohttp: a front end reads every instance's index on
    each sync (twenty instances every 0.5 s), and aiohttp's ~0.5 ms of CPU a call was most of
    that sync (bench/bench_routing.py)."""
    headers = b"" if last is None else b"If-None-Match: %b\r\n" % last.etag.encode()
    try:
        async with asyncio.timeout(timeout_s):
            answer = await http.post(endpoint, "/v2/repository/index", _INDEX_BODY, headers=headers)
    except (HttpError, TimeoutError) as exc:
        raise IndexUnreadable(f"{endpoint}: {exc!r}") from exc
    if answer.status == 304 and last is not None:
        return last
    if answer.status in (404, 405):
        return NO_REPOSITORY_API
    if answer.status != 200:
        raise IndexUnreadable(f"{endpoint}: index answered HTTP {answer.status}")
    try:
        doc: Any = json.loads(answer.body)
    except ValueError as exc:
        raise IndexUnreadable(f"{endpoint}: the index is not JSON") from exc
    if not isinstance(doc, list):
        raise IndexUnreadable(f"{endpoint}: the index is not a JSON array")
    ready = frozenset(
        item["name"]
        for item in doc
        if isinstance(item, dict)
        and isinstance(item.get("name"), str)
        and item.get("state") == "READY"
    )
    return IndexRead(ready, index_etag(answer.body))


async def request_load(
    session: aiohttp.ClientSession,
    endpoint: str,
    model: str,
    timeout_s: float,
    *,
    pin: bool = False,
) -> None:
    """Ask the instance to load `model` and wait until it has (raises LoadFailed). Unpinned by
    default (`Mark-Load-Pin: false`: the front end's loads for held requests); the placement's
    loads pin, so that the worker's cache never evicts what the placement put there."""
    headers = {LOAD_PIN_HEADER: "true" if pin else "false"}
    await _call(
        session, f"{endpoint}/v2/repository/models/{model}/load", timeout_s, headers, LoadFailed
    )


async def request_unload(
    session: aiohttp.ClientSession,
    endpoint: str,
    model: str,
    timeout_s: float,
    *,
    idle_s: float | None = None,
) -> None:
    """Ask the instance to unpin `model` and take it out of memory (raises UnloadFailed). With
    `idle_s` (the front end's idle unloads: `Mark-Unload-Idle-S`) a `mark worker` keeps a model
    pinned or used within that time and answers 409."""
    headers = {} if idle_s is None else {UNLOAD_IDLE_HEADER: f"{idle_s:g}"}
    await _call(
        session, f"{endpoint}/v2/repository/models/{model}/unload", timeout_s, headers, UnloadFailed
    )


async def _call(
    session: aiohttp.ClientSession,
    url: str,
    timeout_s: float,
    headers: dict[str, str],
    error: type[LoadFailed],
) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            async with session.post(url, headers=headers) as resp:
                payload = await resp.read()
                status = resp.status
                answered = resp.headers
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise error(f"the call failed: {exc!r}") from exc
    if status != 200:
        try:
            detail = json.loads(payload).get("error")
        except (ValueError, AttributeError):
            detail = None
        text = detail if isinstance(detail, str) else payload.decode("utf-8", "replace")[:300]
        raise error(
            f"HTTP {status}: {text or 'no detail'}",
            status,
            retry_after_s=_seconds(answered.get("Retry-After")),
            no_room=answered.get(REFUSED_HEADER) == NO_ROOM,
        )


def _seconds(retry_after: str | None) -> float | None:
    """A Retry-After in seconds; None without one, or in a form other than seconds (a date)."""
    try:
        return max(float(retry_after), 0.0) if retry_after is not None else None
    except ValueError:
        return None
