"""The control-plane process of `mark serve` dies while the front end serves (issue 18, item 2):
SIGKILLed under a bounded load, it is restarted by the manager's watchdog
(`mark.apps.control.plane`), reconciles with the local cloud (its workers died with it: the
parent-death signal), replaces the instance and resumes its ticks; the front end answers every
request meanwhile, late if it must (it waits up to `batching.queue_timeout_s` for capacity)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from tests.conftest import Served
from tests.faults import admin_get, admin_post, bounded_load, instances, wait_for, worker_pids

MODEL = "demo"
REQUESTS = 600
CONCURRENCY = 8
RUNNING_LINE = "control plane running"
LATER_MODEL = {
    "name": "later",
    "slo": {"latency_ms": 500, "percentile": 0.98},
    "backend": {"protocol": "kserve-v2", "artifact": "builtin:mlp"},
    "profiles": {
        "c5.large": {"instance_type": "c5.large", "latency_ms": {"1": 50.0}, "max_batch": 1}
    },
    "max_batch": 1,
}

CONFIG = """
[control]
tick_s = 2.0
sync_s = 0.5
[cloud]
zones = ["us-east-1a"]
[planner]
spot = false
allowed_types = ["c5.large"]
[forecast]
predictor = "last"
bucket_s = 2.0
[batching]
worker_timeout_s = 1.0
health_interval_s = 0.5
queue_timeout_s = 45.0
[server]
request_timeout_s = 50.0
"""


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rpartition(")")[2].split()[1])


async def test_control_plane_killed_is_restarted_and_resumes(
    serve_factory: Any, tmp_path: Path
) -> None:
    served: Served = serve_factory(
        f"sqlite+aiosqlite:///{tmp_path / 'mark.db'}",
        extra_args=("--demo",),
        config_text=CONFIG,
    )

    async def running() -> list[Any]:
        return [i for i in await instances(served, MODEL) if i["state"] == "running"]

    first = await wait_for(running, 60.0)
    assert len(first) == 1, served.log()[-3000:]
    plane = _parent(worker_pids(served)[first[0]["id"]])  # the local cloud's workers' parent
    assert _parent(plane) == served.process.pid
    killed_at: list[float] = []

    async def kill() -> None:
        killed_at.append(time.time())
        os.kill(plane, signal.SIGKILL)

    result = await bounded_load(
        served.base_url,
        MODEL,
        requests=REQUESTS,
        concurrency=CONCURRENCY,
        timeout_s=60.0,
        fault_after=50,
        fault=kill,
    )
    counts = result.counts
    print(f"{REQUESTS} sent, answered {dict(counts)}, slowest {max(result.seconds):.2f} s")
    assert counts == {200: REQUESTS}, (counts, served.log()[-4000:])
    assert served.log().count(RUNNING_LINE) >= 2, served.log()[-4000:]

    async def replaced() -> list[Any]:
        return [i for i in await running() if i["id"] != first[0]["id"]]

    assert await wait_for(replaced, 30.0), served.log()[-4000:]
    every = {i["id"]: i for i in await instances(served, MODEL, all_states=True)}
    assert every[first[0]["id"]]["state"] == "terminated"
    decisions = (await admin_get(served, f"/admin/v1/decisions?limit=200&model={MODEL}"))[
        "decisions"
    ]
    after = [d for d in decisions if d["at_s"] > killed_at[0]]
    for d in sorted(after, key=lambda d: d["at_s"]):
        print(f"+{d['at_s'] - killed_at[0]:.1f} s {d['action']} {d['instance_id']}: "
              f"{d['reason'][:90]}")  # fmt: skip
    assert any(d["action"] == "launch" for d in after), after  # the restarted loop planned
    # and its periodic tick runs: a model registered now gets its floor of one instance
    await admin_post(served, "/admin/v1/models", LATER_MODEL)

    async def launched() -> list[Any]:
        page = await admin_get(served, "/admin/v1/decisions?limit=50&model=later")
        return [d for d in page["decisions"] if d["action"] == "launch"]

    assert await wait_for(launched, 20.0), served.log()[-3000:]
