"""A spot interruption notice under load, on the local cloud and on the EC2 emulator (issue 18,
item 2): the control loop, the cloud (real `mark worker` processes: the local cloud's own, or the
emulator's instances brought up by tests/ec2_fleet.py from their user data), the local function
pool and a real front end, in this process. The only instance, on spot, gets a notice early in a
bounded load: the loop drains it and launches its replacement at once (before the cloud takes it
back), the front end stops routing to it and spills or holds its requests meanwhile, and every
request is answered exactly once, none refused. On EC2 the notice is the spot request's
`marked-for-termination` status (injected at the wire: moto never sets it) and the reclaim is a
TerminateInstances by the test, standing for AWS, when the notice runs out."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mark.adapters.db import Database
from mark.apps.control.loop import ControlLoop
from mark.apps.control.plane import build_cloud
from mark.core.catalog import load_catalog
from mark.core.config import Config
from mark.core.types import ActionKind, Instance, InstanceState, Market
from provisioner.adapters.ec2 import Ec2Cloud
from provisioner.adapters.local_cloud import LocalCloud
from provisioner.adapters.serverless import InvokeServer, LocalFunctionPool
from tests.aws import inject, spot_requests_xml
from tests.conftest import free_port
from tests.dataplane import front_end, wait_routable
from tests.ec2_fleet import ec2_worker_command, loopback_subnets, running_machines
from tests.faults import bounded_load

MODEL = "demo"
REQUESTS = 1500
CONCURRENCY = 16
PACE_S = 0.15  # about 100 req/s: the load outlasts the notice, the reclaim and the gap after
NOTICE_S = 8.0
ZONES = ["us-east-1a", "us-east-1b"]


def _config(tmp_path: Path, **cloud: Any) -> Config:
    return Config.model_validate(
        {
            "server": {"port": free_port()},
            "database": {"url": f"sqlite+aiosqlite:///{tmp_path / 'mark.db'}"},
            "control": {"tick_s": 5.0, "sync_s": 0.5},
            "cloud": {
                "zones": ZONES,
                "interruption_notice_s": NOTICE_S,
                "local_state_dir": str(tmp_path / "cloud"),
                **cloud,
            },
            "planner": {"allowed_types": ["c5.large"], "min_instances": 1},
            "forecast": {"predictor": "last", "bucket_s": 5.0},
            "serverless": {"local_port": free_port(), "concurrency": 4},
            "batching": {"worker_timeout_s": 1.0, "health_interval_s": 0.5},
        }
    )


@contextlib.asynccontextmanager
async def _control(config: Config) -> AsyncIterator[tuple[ControlLoop, Any]]:
    """The control plane's parts as `mark serve` wires them (`build_cloud` included), with its
    two jobs running; the loop and the provider behind the retry layer."""
    db = await Database.open(config.database.url)
    cloud = build_cloud(config, db)
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
        yield loop, cloud.inner  # type: ignore[attr-defined]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await loop.release_all()
        await server.close()
        await pool.close()
        await cloud.close()
        await db.close()


async def _notice_under_load(
    config: Config, loop: ControlLoop, cloud: Any, interrupt: Callable[[Instance], Awaitable[float]]
) -> None:
    """The only instance, on spot in the first zone, interrupted after 100 answers by
    `interrupt` (which returns when the cloud will take it back); checks that nothing was lost,
    that the replacement was launched before then and that the victim was drained."""
    await loop.db.create_model(load_catalog().model(MODEL).to_model())
    spot = next(
        o
        for o in await cloud.offerings()
        if o.instance_type == "c5.large" and o.market == Market.SPOT and o.zone == ZONES[0]
    )
    victim = await cloud.launch(spot, [MODEL])
    await loop.db.save_instance(victim)
    await loop.sync()
    reclaim_at: list[float] = []

    async def fault() -> None:
        reclaim_at.append(await interrupt(victim))

    async with front_end(config) as app:
        await wait_routable(app, MODEL, timeout_s=60.0)
        began = time.monotonic()
        result = await bounded_load(
            f"http://127.0.0.1:{config.server.port}",
            MODEL,
            requests=REQUESTS,
            concurrency=CONCURRENCY,
            timeout_s=40.0,
            fault_after=100,
            fault=fault,
            pace_s=PACE_S,
        )
        took_s = time.monotonic() - began
    counts = result.counts
    print(
        f"{REQUESTS} sent over {took_s:.1f} s, answered {dict(counts)}, "
        f"slowest {max(result.seconds):.2f} s"
    )
    assert counts == {200: REQUESTS}, counts
    every = {i.id: i for i in await loop.db.list_instances(live_only=False)}
    replacements = [i for i in every.values() if i.id != victim.id]
    assert replacements, every
    # replaced at once: launched on the notice, before the cloud took the instance back
    assert min(i.launched_at_s for i in replacements) < reclaim_at[0]
    assert every[victim.id].state in (InstanceState.DRAINING, InstanceState.TERMINATED)
    decisions, _ = await loop.db.list_decisions(limit=100)
    drained = [d for d in decisions if d.instance_id == victim.id]
    assert any(d.action == ActionKind.DRAIN for d in drained), decisions
    noticed = reclaim_at[0] - NOTICE_S
    for d in sorted(decisions, key=lambda d: d.at_s):
        print(f"+{d.at_s - noticed:.1f} s {d.action} {d.instance_id}: {d.reason[:90]}")
    for i in every.values():
        print(i.id, i.offering.key, i.state, f"launched +{i.launched_at_s - noticed:.1f} s")


async def test_spot_notice_under_load_replaces_at_once_and_loses_nothing(tmp_path: Path) -> None:
    config = _config(tmp_path)
    async with _control(config) as (loop, cloud):
        assert isinstance(cloud, LocalCloud)

        async def interrupt(victim: Instance) -> float:
            return cloud.interrupt(victim.id, notice_s=NOTICE_S).terminate_at_s

        await _notice_under_load(config, loop, cloud, interrupt)


async def test_spot_notice_on_the_ec2_emulator_under_load_loses_nothing(
    tmp_path: Path, moto_url: str, image_id: str, outside: Any
) -> None:
    owner = f"spot-{uuid.uuid4().hex[:8]}"
    config = _config(
        tmp_path,
        provider="ec2",
        endpoint_url=moto_url,
        image_id=image_id,
        owner=owner,
        subnet_ids=loopback_subnets(outside, ZONES),
        worker_command=ec2_worker_command(),
        worker_port=free_port(),
        poll_interval_s=0.5,
        api_max_attempts=1,
    )
    reclaims: list[asyncio.Task[Any]] = []
    async with running_machines(outside, owner, tmp_path) as machines:
        async with _control(config) as (loop, cloud):
            assert isinstance(cloud, Ec2Cloud)

            async def interrupt(victim: Instance) -> float:
                marked = datetime.now(UTC)
                body = spot_requests_xml(victim.id, "marked-for-termination", update_time=marked)
                inject(cloud, "DescribeSpotInstanceRequests", body, status=200)

                async def reclaim() -> None:  # AWS takes the instance back when the notice ends
                    await asyncio.sleep(NOTICE_S)
                    await asyncio.to_thread(outside.terminate_instances, InstanceIds=[victim.id])

                reclaims.append(asyncio.create_task(reclaim()))
                return marked.timestamp() + NOTICE_S

            await _notice_under_load(config, loop, cloud, interrupt)
            await asyncio.gather(*reclaims)
        print("instances that ran a worker:", machines.started)
