"""`mark serve` SIGKILLed, its whole process group, while the control loop launches instances
on the local cloud, then restarted on the same database and `cloud.local_state_dir` (issue 18,
item 2): after the restarted control plane's first sync (it syncs before it reports running),
every instance recorded or left in the state file is either listed live with a worker that
answers for it or recorded terminated with no process left; no worker runs untracked, and the
ledger has one charge row per instance."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

from provisioner.adapters.local_cloud import _running
from tests.conftest import Served
from tests.faults import admin_get, admin_post, instances, wait_for, worker_pids
from tests.test_serve_control_loop import MODEL, write_schedule

CONFIG = """
[control]
tick_s = 1.0
sync_s = 0.5
[cloud]
launch_overhead_scale = 0.02
zones = ["us-east-1a"]
[planner]
horizon_s = 10.0
spot = false
allowed_types = ["c5.large"]
[forecast]
predictor = "last"
bucket_s = 1.0
schedule_file = "{schedule}"
"""


def _ledger(db_path: Path) -> tuple[list[str], list[str]]:
    """Instance ids recorded, and those with a charge row (one row each by its key)."""
    with sqlite3.connect(db_path) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM instances")]
        charged = [r[0] for r in conn.execute("SELECT instance_id FROM instance_charges")]
    conn.close()
    return ids, charged


async def test_serve_killed_mid_launch_restart_reconciles(
    serve_factory: Any, tmp_path: Path
) -> None:
    schedule = tmp_path / "step.csv"
    write_schedule(schedule, time.time() + 25.0)
    db_path = tmp_path / "mark.db"
    db_url = f"sqlite+aiosqlite:///{db_path}"
    config = CONFIG.format(schedule=schedule)
    first: Served = serve_factory(db_url, config_text=config)
    await admin_post(first, "/admin/v1/models", MODEL)
    name = MODEL["name"]

    async def mid_launch() -> bool:
        live = await instances(first, name)
        states = {i["state"] for i in live}
        return len(live) >= 2 and "pending" in states

    if not await wait_for(mid_launch, 60.0, interval_s=0.2):
        page = await admin_get(first, "/admin/v1/decisions?limit=20")
        raise AssertionError((await instances(first, name), page, first.log()[-3000:]))
    before = await instances(first, name)
    os.killpg(first.process.pid, signal.SIGKILL)
    first.process.wait(timeout=30.0)
    left = worker_pids(first)  # the state file as the killed provider left it
    assert left, first.log()[-3000:]
    await asyncio.sleep(1.0)  # the parent-death signal reaches the workers
    survivors = {i: pid for i, pid in left.items() if _running(pid)}

    second: Served = serve_factory(db_url, config_text=config)

    async def accounted() -> dict[str, Any]:
        """The instances of the killed run, once each is either terminated or has a live
        worker under the state dir (adopted); empty while one is neither (a ghost the
        planner would count as capacity)."""
        after = {i["id"]: i for i in await instances(second, name, all_states=True)}
        pids = worker_pids(second)
        for inst in before:
            record = after.get(inst["id"])
            if record is None:
                return {}
            pid = pids.get(inst["id"])
            if record["state"] != "terminated" and (pid is None or not _running(pid)):
                return {}
        return after

    after = await wait_for(accounted, 15.0)
    assert after, (before, worker_pids(second), second.log()[-3000:])
    live = {i: r for i, r in after.items() if r["state"] != "terminated"}
    for instance_id, pid in survivors.items():
        if _running(pid):  # a worker that outlived the kill is adopted, never left untracked
            assert instance_id in live, (instance_id, pid, live)
    running_pids = {i: pid for i, pid in worker_pids(second).items() if _running(pid)}
    assert set(running_pids) <= set(live), (running_pids, live)
    for instance_id in set(after) - set(live):
        pid = left.get(instance_id)
        assert pid is None or not _running(pid), (instance_id, pid)
    ids, charged = _ledger(db_path)
    assert len(ids) == len(set(ids))
    assert sorted(charged) == sorted(ids), (charged, ids)
    print(
        f"before the kill {len(before)} live ({sorted(i['state'] for i in before)}); "
        f"{len(left)} in the state file, {len(survivors)} workers survived; after the restart "
        f"{len(live)} live, {len(after) - len(live)} terminated"
    )
