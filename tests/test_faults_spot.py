"""A spot interruption notice under load on the local cloud (issue 18, item 2): the control
loop, the local cloud (real `mark worker` processes), the local function pool and a real front
end, in this process. The only instance, on spot, gets a notice early in a bounded load: the
loop drains it and launches its replacement at once (before the cloud takes it back), the
front end stops routing to it and spills or holds its requests meanwhile, and every request is
answered exactly once, none refused."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from mark.adapters.db import Database
from mark.apps.control.loop import ControlLoop
from mark.core.catalog import load_catalog
from mark.core.config import Config
from mark.core.types import ActionKind, InstanceState, Market
from provisioner.adapters.local_cloud import LocalCloud
from provisioner.adapters.serverless import InvokeServer, LocalFunctionPool
from tests.conftest import free_port
from tests.dataplane import front_end, wait_routable
from tests.faults import bounded_load

MODEL = "demo"
REQUESTS = 1000
CONCURRENCY = 16
NOTICE_S = 8.0


def _config(tmp_path: Path) -> Config:
    return Config.model_validate(
        {
            "server": {"port": free_port()},
            "database": {"url": f"sqlite+aiosqlite:///{tmp_path / 'mark.db'}"},
            "control": {"tick_s": 5.0, "sync_s": 0.5},
            "cloud": {"zones": ["us-east-1a", "us-east-1b"]},
            "planner": {"allowed_types": ["c5.large"], "min_instances": 1},
            "forecast": {"predictor": "last", "bucket_s": 5.0},
            "serverless": {"local_port": free_port(), "concurrency": 4},
            "batching": {"worker_timeout_s": 1.0, "health_interval_s": 0.5},
        }
    )


@contextlib.asynccontextmanager
async def _control(config: Config, tmp_path: Path) -> AsyncIterator[tuple[ControlLoop, Any]]:
    """The control plane's parts as `mark serve` wires them, with its two jobs running."""
    db = await Database.open(config.database.url)
    cloud = LocalCloud(config.cloud, models=db.get_model, state_dir=tmp_path / "cloud")
    pool = LocalFunctionPool(config.serverless)
    server = InvokeServer(pool, port=config.serverless.local_port)
    await server.start()
    loop = ControlLoop(db, cloud, config, counts=dict, serverless=pool)

    async def syncing() -> None:
        while True:
            await loop.sync_and_replan()
            await asyncio.sleep(config.control.sync_s)

    tasks = [asyncio.create_task(loop.watch_interruptions()), asyncio.create_task(syncing())]
    try:
        yield loop, cloud
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await loop.release_all()
        await server.close()
        await pool.close()
        await cloud.close()
        await db.close()


async def test_spot_notice_under_load_replaces_at_once_and_loses_nothing(tmp_path: Path) -> None:
    config = _config(tmp_path)
    async with _control(config, tmp_path) as (loop, cloud):
        await loop.db.create_model(load_catalog().model(MODEL).to_model())
        spot = next(
            o
            for o in await cloud.offerings()
            if o.instance_type == "c5.large" and o.market == Market.SPOT and o.zone.endswith("a")
        )
        victim = await cloud.launch(spot, [MODEL])
        await loop.db.save_instance(victim)
        await cloud.wait_running(victim.id, 60.0)
        await loop.sync()
        notices: list[Any] = []

        async def interrupt() -> None:
            notices.append(cloud.interrupt(victim.id, notice_s=NOTICE_S))

        async with front_end(config) as app:
            await wait_routable(app, MODEL, timeout_s=30.0)
            result = await bounded_load(
                f"http://127.0.0.1:{config.server.port}",
                MODEL,
                requests=REQUESTS,
                concurrency=CONCURRENCY,
                timeout_s=40.0,
                fault_after=100,
                fault=interrupt,
            )
        counts = result.counts
        print(f"{REQUESTS} sent, answered {dict(counts)}, slowest {max(result.seconds):.2f} s")
        assert counts == {200: REQUESTS}, counts
        notice = notices[0]
        every = {i.id: i for i in await loop.db.list_instances(live_only=False)}
        replacements = [i for i in every.values() if i.id != victim.id]
        assert replacements, every
        # replaced at once: launched on the notice, before the cloud took the instance back
        assert min(i.launched_at_s for i in replacements) < notice.terminate_at_s
        assert every[victim.id].state in (InstanceState.DRAINING, InstanceState.TERMINATED)
        decisions, _ = await loop.db.list_decisions(limit=100)
        drained = [d for d in decisions if d.instance_id == victim.id]
        assert any(d.action == ActionKind.DRAIN for d in drained), decisions
        for d in sorted(decisions, key=lambda d: d.at_s):
            print(f"+{d.at_s - notice.at_s:.1f} s {d.action} {d.instance_id}: {d.reason[:90]}")
        for i in every.values():
            print(i.id, i.offering.key, i.state, f"launched +{i.launched_at_s - notice.at_s:.1f} s")
