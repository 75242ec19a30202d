"""The serverless pool slow or failing while it is all there is (issue 18, item 2): `mark serve
--demo` whose local function pool runs a handler that fails every request, or answers only
after longer than the front end may wait, and whose only instance is SIGKILLed early in a
bounded load. Requests fall back to queueing (for the replacement instance) or get a clear 503;
none hangs past `batching.queue_timeout_s` (each is answered within it plus a margin for the
HTTP round trip on a loaded machine), and every one is answered exactly once."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from provisioner.adapters.serverless.local import DEFAULT_HANDLER_PATH
from tests.conftest import Served
from tests.faults import bounded_load, instances, wait_for, worker_pids

MODEL = "demo"
REQUESTS = 400
CONCURRENCY = 16
QUEUE_TIMEOUT_S = 4.0
MARGIN_S = 3.0

# A handler that wraps the real one (deploy/lambda/handler.py): warm-up pings pass, inference
# events sleep and then fail or answer.
HANDLER = """
import importlib.util, time
spec = importlib.util.spec_from_file_location("real_handler", {real!r})
real = importlib.util.module_from_spec(spec)
spec.loader.exec_module(real)

def handler(event, context):
    if event.get("warm"):
        return real.handler(event, context)
    time.sleep({sleep_s})
    if {fail}:
        raise RuntimeError("the function failed on purpose")
    return real.handler(event, context)
"""

CONFIG = """
[control]
tick_s = 5.0
sync_s = 0.5
[cloud]
zones = ["us-east-1a"]
[planner]
spot = false
allowed_types = ["c5.large"]
[forecast]
predictor = "last"
bucket_s = 5.0
[batching]
worker_timeout_s = 1.0
health_interval_s = 0.5
queue_timeout_s = {queue_timeout_s}
[serverless]
handler_path = {handler!r}
timeout_s = 20.0
"""


@pytest.mark.parametrize(
    ("fail", "sleep_s"),
    [(True, 0.2), (False, 2.0 * QUEUE_TIMEOUT_S)],
    ids=["failing", "slower-than-the-queue-timeout"],
)
async def test_pool_slow_or_failing_with_no_instance(
    serve_factory: Any, tmp_path: Path, fail: bool, sleep_s: float
) -> None:
    handler = tmp_path / "handler.py"
    handler.write_text(HANDLER.format(real=str(DEFAULT_HANDLER_PATH), sleep_s=sleep_s, fail=fail))
    served: Served = serve_factory(
        f"sqlite+aiosqlite:///{tmp_path / 'mark.db'}",
        extra_args=("--demo",),
        config_text=CONFIG.format(queue_timeout_s=QUEUE_TIMEOUT_S, handler=str(handler)),
    )

    async def running() -> list[Any]:
        return [i for i in await instances(served, MODEL) if i["state"] == "running"]

    first = await wait_for(running, 60.0)
    assert len(first) == 1, served.log()[-3000:]
    pid = worker_pids(served)[first[0]["id"]]

    async def kill() -> None:
        os.kill(pid, signal.SIGKILL)

    result = await bounded_load(
        served.base_url,
        MODEL,
        requests=REQUESTS,
        concurrency=CONCURRENCY,
        timeout_s=QUEUE_TIMEOUT_S + 30.0,
        fault_after=50,
        fault=kill,
    )
    counts = result.counts
    print(f"{REQUESTS} sent, answered {dict(counts)}, slowest {max(result.seconds):.2f} s")
    assert sum(counts.values()) == REQUESTS
    assert set(counts) <= {200, 503}, (counts, served.log()[-4000:])
    assert counts[200] > 0
    assert max(result.seconds) <= QUEUE_TIMEOUT_S + MARGIN_S, sorted(result.seconds)[-5:]
    # the pool's trouble shows in the log of spills it did not answer
    failures = await _spill_failures(served)
    assert failures > 0, served.log()[-4000:]
    print(f"spills the pool did not answer: {failures:g}")


async def _spill_failures(served: Served) -> float:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(served.base_url + "/metrics") as r:
            text = await r.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("mark_spill_failures_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total
