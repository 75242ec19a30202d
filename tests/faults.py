"""Shared parts of the fault tests (tests/test_faults_*.py): a bounded closed-loop load against a
running `mark serve` whose every request is counted once, a fault injected while it runs, and
reads of the fleet through the admin API and the local cloud's state file."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import Served

BODY = {"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]}


@dataclass
class LoadResult:
    """Each request's status (or the client error's name) and when it was answered, in the
    order they were sent."""

    statuses: list[int | str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    @property
    def counts(self) -> Counter[int | str]:
        return Counter(self.statuses)


async def bounded_load(
    base_url: str,
    model: str,
    *,
    requests: int,
    concurrency: int,
    timeout_s: float,
    fault_after: int | None = None,
    fault: Callable[[], Awaitable[None]] | None = None,
    pace_s: float = 0.0,
    stop: asyncio.Event | None = None,
) -> LoadResult:
    """`requests` requests from `concurrency` closed-loop clients, each with a client timeout of
    `timeout_s` and `pace_s` of think time after each answer (so that a load can outlast a
    fault's whole course); `fault` runs once, when `fault_after` requests have been answered.
    With `stop`, no request is sent once it is set (the result holds those sent). Every
    request sent is counted once in the result, answered or not."""
    url = f"{base_url}/v2/models/{model}/infer"
    result = LoadResult([0] * requests, [0.0] * requests)
    next_index = 0
    answered = 0
    fault_task: asyncio.Task[None] | None = None
    timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal next_index, answered, fault_task
        while next_index < requests and not (stop is not None and stop.is_set()):
            index = next_index
            next_index += 1
            started = time.monotonic()
            status: int | str
            try:
                async with session.post(url, json=BODY, timeout=timeout) as r:
                    await r.read()
                    status = r.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = type(exc).__name__
            result.statuses[index] = status
            result.seconds[index] = time.monotonic() - started
            answered += 1
            if fault is not None and fault_task is None and answered >= (fault_after or 0):
                fault_task = asyncio.create_task(fault())
            if pace_s:
                await asyncio.sleep(pace_s)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    if fault_task is not None:
        await fault_task
    return LoadResult(result.statuses[:next_index], result.seconds[:next_index])


async def admin_get(served: Served, path: str) -> Any:
    async with aiohttp.ClientSession() as session:
        async with session.get(served.base_url + path, headers=served.auth) as r:
            assert r.status == 200, await r.text()
            return await r.json()


async def admin_post(served: Served, path: str, body: Any) -> Any:
    async with aiohttp.ClientSession() as session:
        async with session.post(served.base_url + path, json=body, headers=served.auth) as r:
            assert r.status in (200, 201), await r.text()
            return await r.json()


async def instances(served: Served, model: str, *, all_states: bool = False) -> list[Any]:
    query = f"?model={model}" + ("&all=true" if all_states else "")
    return list((await admin_get(served, "/admin/v1/instances" + query))["instances"])


async def wait_for(
    check: Callable[[], Awaitable[Any]], timeout_s: float, interval_s: float = 0.5
) -> Any:
    """The first truthy result of `check` within `timeout_s`, else the last (falsy) one."""
    deadline = time.monotonic() + timeout_s
    value = await check()
    while not value and time.monotonic() < deadline:
        await asyncio.sleep(interval_s)
        value = await check()
    return value


def worker_pids(served: Served) -> dict[str, int]:
    """The local cloud's worker pids by instance id, from its state file (a launch whose worker
    has not started yet has none)."""
    path = served.workdir / ".mark-local-cloud" / "instances.json"
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    records = doc.get("instances", [])
    return {r["instance"]["id"]: int(r["pid"]) for r in records if r["pid"] is not None}
