"""`mark serve` SIGKILLed, its whole process group, while the control loop launches instances
on the local cloud, and again while it terminates them (the model deleted), each time
restarted on the same database and `cloud.local_state_dir` (issue 18, item 2): soon after the
restarted control plane's first sync (it syncs before it reports running), every instance of
the killed run is either live with a worker process under the state dir (adopted) or recorded
terminated with no process left; no worker runs untracked, and the ledger has one charge row
per instance."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

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
drain_s = 1.0
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


async def _kill_restart_check(
    serve_factory: Any, served: Served, db_url: str, db_path: Path, config: str
) -> tuple[Served, str]:
    """SIGKILL `served`'s process group, restart on the same database and state dir, check
    that every instance of the killed run is accounted for; the new server and a summary."""
    name = MODEL["name"]
    before = await instances(served, name)
    os.killpg(served.process.pid, signal.SIGKILL)
    served.process.wait(timeout=30.0)
    left = worker_pids(served)  # the state file as the killed provider left it
    await asyncio.sleep(1.0)  # the parent-death signal reaches the workers
    survivors = {i: pid for i, pid in left.items() if _running(pid)}

    again: Served = serve_factory(db_url, config_text=config)

    async def accounted() -> dict[str, Any]:
        """The instances of the killed run, once each is either terminated or has a live
        worker under the state dir (adopted); empty while one is neither (a ghost the
        planner would count as capacity)."""
        after = {i["id"]: i for i in await instances(again, name, all_states=True)}
        pids = worker_pids(again)
        for inst in before:
            record = after.get(inst["id"])
            if record is None:
                return {}
            pid = pids.get(inst["id"])
            if record["state"] != "terminated" and (pid is None or not _running(pid)):
                return {}
        return after

    after = await wait_for(accounted, 15.0)
    assert after, (before, worker_pids(again), again.log()[-3000:])
    live = {i: r for i, r in after.items() if r["state"] != "terminated"}
    for instance_id, pid in survivors.items():
        if _running(pid):  # a worker that outlived the kill is adopted, never left untracked
            assert instance_id in live, (instance_id, pid, live)
    running_pids = {i: pid for i, pid in worker_pids(again).items() if _running(pid)}
    assert set(running_pids) <= set(live), (running_pids, live)
    for instance_id in set(after) - set(live):
        pid = left.get(instance_id)
        assert pid is None or not _running(pid), (instance_id, pid)

    async def ledger_consistent() -> bool:  # a launch gets its charge row at the next sync
        ids, charged = _ledger(db_path)
        return sorted(charged) == sorted(ids)

    assert await wait_for(ledger_consistent, 5.0), _ledger(db_path)
    killed = {i["id"] for i in before}
    summary = (
        f"killed with {len(before)} live ({sorted(i['state'] for i in before)}), "
        f"{len(left)} workers in the state file, {len(survivors)} outlived the kill; after the "
        f"restart {len(killed & set(live))} adopted, {len(killed - set(live))} terminated"
    )
    return again, summary


async def test_serve_killed_mid_launch_and_mid_termination_restart_reconciles(
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
        return len(live) >= 2 and "pending" in {i["state"] for i in live}

    if not await wait_for(mid_launch, 60.0, interval_s=0.2):
        page = await admin_get(first, "/admin/v1/decisions?limit=20")
        raise AssertionError((await instances(first, name), page, first.log()[-3000:]))
    second, launching = await _kill_restart_check(serve_factory, first, db_url, db_path, config)

    async def some_running() -> bool:
        return any(i["state"] == "running" for i in await instances(second, name))

    assert await wait_for(some_running, 60.0), second.log()[-3000:]
    serving = {i["id"] for i in await instances(second, name) if i["state"] == "running"}
    async with aiohttp.ClientSession() as session:  # its instances are drained, then terminated
        url = f"{second.base_url}/admin/v1/models/{name}"
        async with session.delete(url, headers=second.auth) as r:
            assert r.status == 204, await r.text()

    async def mid_termination() -> bool:
        now = await instances(second, name, all_states=True)
        return any(i["state"] != "running" for i in now if i["id"] in serving)

    assert await wait_for(mid_termination, 30.0, interval_s=0.1), second.log()[-3000:]
    _, terminating = await _kill_restart_check(serve_factory, second, db_url, db_path, config)
    print(f"mid-launch: {launching}\nmid-termination: {terminating}")


EC2_CONFIG = """
[control]
tick_s = 1.0
sync_s = 0.5
reconcile_grace_s = 5.0
{cloud}[planner]
horizon_s = 300.0
drain_s = 1.0
spot = false
allowed_types = ["c5.large"]
[forecast]
predictor = "last"
bucket_s = 1.0
schedule_file = "{schedule}"
"""


async def test_serve_killed_on_the_ec2_emulator_restart_adopts_what_the_cloud_runs(
    serve_factory: Any, tmp_path: Path, moto_url: str, image_id: str, outside: Any
) -> None:
    """On EC2 an instance outlives the control plane that bought it (on the local cloud the
    workers die with its process group): `mark serve` SIGKILLed while it launches, and again
    while it terminates, then restarted on the same database; each time every instance EC2
    runs for the owner is adopted (tracked live, its worker serving) or terminated, none
    runs untracked, and the ledger has one charge row per instance."""
    from tests.aws import FAKE_ENV
    from tests.ec2_fleet import cloud_ids, ec2_cloud_toml, running_machines

    owner = f"restart-{uuid.uuid4().hex[:8]}"
    schedule = tmp_path / "steady.csv"  # 40 req/s from now on: several instances, bought at once
    start_s = int(time.time())
    rows = [f"{t},{40.0 if t >= start_s else 0.0}" for t in range(start_s - 60, start_s + 600)]
    schedule.write_text("timestamp_s,requests\n" + "\n".join(rows) + "\n")
    db_path = tmp_path / "mark.db"
    db_url = f"sqlite+aiosqlite:///{db_path}"
    cloud = ec2_cloud_toml(outside, moto_url, image_id, owner, ["us-east-1a"])
    config = EC2_CONFIG.format(cloud=cloud, schedule=schedule)
    name = MODEL["name"]

    def start() -> Served:
        served: Served = serve_factory(db_url, config_text=config, env=FAKE_ENV)
        return served

    async def kill_and_restart(served: Served) -> tuple[Served, str]:
        running_at_kill = await asyncio.to_thread(cloud_ids, outside, owner)
        recorded = {i["id"] for i in await instances(served, name, all_states=True)}
        os.killpg(served.process.pid, signal.SIGKILL)
        served.process.wait(timeout=30.0)
        again = start()

        async def accounted() -> bool:
            """The cloud's instances are the restarted server's live ones, each serving."""
            live = {i["id"]: i for i in await instances(again, name)}
            ours = await asyncio.to_thread(cloud_ids, outside, owner)
            serving = all(machines.processes.get(i) is not None for i in ours)
            return set(live) == ours and serving

        assert await wait_for(accounted, 30.0), (
            await asyncio.to_thread(cloud_ids, outside, owner),
            await instances(again, name, all_states=True),
            again.log()[-3000:],
        )

        async def ledger_consistent() -> bool:
            ids, charged = _ledger(db_path)
            return sorted(charged) == sorted(ids)

        assert await wait_for(ledger_consistent, 5.0), _ledger(db_path)
        live = {i["id"] for i in await instances(again, name)}
        unrecorded = running_at_kill - recorded
        return again, (
            f"killed with {len(running_at_kill)} running in EC2 ({len(unrecorded)} not yet "
            f"recorded); after the restart {len(running_at_kill & live)} adopted, "
            f"{len(running_at_kill - live)} terminated"
        )

    async with running_machines(outside, owner, tmp_path) as machines:
        first = start()
        await admin_post(first, "/admin/v1/models", MODEL)

        async def launching() -> bool:  # the step needs several instances: some are bought
            return len(await asyncio.to_thread(cloud_ids, outside, owner)) >= 2

        assert await wait_for(launching, 60.0, interval_s=0.1), first.log()[-3000:]
        second, mid_launch = await kill_and_restart(first)

        async with aiohttp.ClientSession() as session:  # its instances drain, then terminate
            url = f"{second.base_url}/admin/v1/models/{name}"
            async with session.delete(url, headers=second.auth) as r:
                assert r.status == 204, await r.text()

        async def terminating() -> bool:
            now = await instances(second, name, all_states=True)
            return any(i["state"] in ("draining", "terminated") for i in now)

        assert await wait_for(terminating, 30.0, interval_s=0.1), second.log()[-3000:]
        third, mid_termination = await kill_and_restart(second)

        async def all_gone() -> bool:  # the model is deleted: the restarted one finishes the job
            return not await asyncio.to_thread(cloud_ids, outside, owner)

        assert await wait_for(all_gone, 30.0), third.log()[-3000:]
    print(f"EC2 mid-launch: {mid_launch}\nEC2 mid-termination: {mid_termination}")
