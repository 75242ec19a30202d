"""The control loop on the local cloud and the local function pool (real sandbox processes):
each tick warms the pool with the plan's count, the pre-warming rule of
`provisioner.policy.prewarm` (what the running fleet leaves of the forecast, at the pool's
latency, plus one); forecasters see whole buckets only, however often the loop re-plans; a
many-model instance's charge is shared among its models by the front end's busy time."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from frontend import metrics
from frontend.fleet import Fleet
from mark.adapters.db import Database
from mark.apps.control.loop import ControlLoop, Schedule
from mark.core.catalog import load_catalog
from mark.core.config import BatchingConfig, Config, ServerlessConfig
from mark.core.protocol import InferRequest, Tensor
from provisioner.adapters.local_cloud import LocalCloud
from provisioner.adapters.serverless import LocalFunctionPool
from provisioner.policy.prewarm import warm_functions
from traces import Trace

RATE_RPS = 4.0
WARM_MS = 500.0


def _config(**forecast: Any) -> Config:
    return Config.model_validate(
        {
            "cloud": {"zones": ["us-east-1a"], "launch_overhead_scale": 0.001},
            "forecast": {"predictor": "last", **forecast},
            # A budget nothing fits in: no instance is bought, so none serves, and the pool
            # must take the whole forecast.
            "planner": {"budget_per_hour": 1e-6, "spot": False},
            "spill": {"serverless_warm_ms": WARM_MS},
        }
    )


async def test_each_tick_warms_the_local_pool_with_the_rules_count(tmp_path: Path) -> None:
    model = load_catalog().model("demo").to_model()
    db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'loop.db'}")
    await db.create_model(model)
    config = _config()
    start = time.time()
    times = np.arange(start - 60.0, start + 3600.0, 60.0)
    known = Schedule(
        Trace(timestamps_s=times, counts=np.full(times.size, RATE_RPS * 60.0), bucket_s=60.0)
    )
    cloud = LocalCloud(config.cloud, models=db.get_model, state_dir=tmp_path / "cloud")
    pool = LocalFunctionPool(ServerlessConfig(concurrency=4, timeout_s=60))
    loop = ControlLoop(
        db, cloud, config, counts=dict, schedule=known, clock=lambda: start, serverless=pool
    )
    try:
        result = await loop.tick()
        assert result is not None and not result.actions
        expected = warm_functions(RATE_RPS, 0.0, WARM_MS)
        assert expected == 3
        assert result.warm_functions == {model.name: expected}
        warm = pool.profile(model.name, default_warm_ms=999.0)
        assert warm.idle_warm == expected  # that many sandboxes hold the model now
        costs = await db.costs()  # the pings are billed, and the ledger says so
        assert costs.serverless_requests == expected and costs.serverless_usd > 0
    finally:
        await pool.close()
        await cloud.close()
        await db.close()


class _Clock:
    def __init__(self, now_s: float) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


async def test_a_replan_within_a_bucket_feeds_the_forecaster_nothing(tmp_path: Path) -> None:
    model = load_catalog().model("demo").to_model()
    db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'loop.db'}")
    await db.create_model(model)
    config = _config(bucket_s=60.0)
    clock = _Clock(time.time())
    total = {model.name: 0.0}
    cloud = LocalCloud(config.cloud, models=db.get_model, state_dir=tmp_path / "cloud")
    loop = ControlLoop(db, cloud, config, counts=lambda: dict(total), clock=clock)
    try:
        await loop.tick()  # first sight: the first bucket starts here
        total[model.name] += 30.0
        clock.now_s += 20.0
        await loop.tick()  # an interruption's re-plan, 20 s into the bucket
        forecaster = loop.forecasters[model.name]
        assert forecaster.observed_buckets == 0
        total[model.name] += 90.0
        clock.now_s += 40.0
        await loop.tick()  # the bucket is over: all its 120 requests, as one bucket
        assert forecaster.observed_buckets == 1
        assert forecaster.forecast(1).mean_rps[0] == pytest.approx(120.0 / 60.0)
    finally:
        await cloud.close()
        await db.close()


async def test_a_many_model_instances_charge_is_shared_by_busy_time(tmp_path: Path) -> None:
    """One real local worker serving two models, busy 3:1 in the first period: the ledger
    gives them 75 % and 25 % of it; a second period with no busy time goes half and half."""
    demo = load_catalog().model("demo").to_model()
    other = demo.model_copy(update={"name": "demo-b"})
    db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'loop.db'}")
    for m in (demo, other):
        await db.create_model(m)
    config = _config()
    cloud = LocalCloud(config.cloud, models=db.get_model, state_dir=tmp_path / "cloud")
    busy: dict[tuple[str, str], float] = {}
    try:
        offering = next(
            o for o in await cloud.offerings() if o.market.value == "on-demand" and o.available
        )
        inst = await cloud.launch(offering, [demo.name, other.name])
        await db.save_instance(inst)
        clock = _Clock(inst.launched_at_s)
        loop = ControlLoop(db, cloud, config, counts=dict, clock=clock, busy=lambda: dict(busy))
        busy.update({(inst.id, demo.name): 30.0, (inst.id, other.name): 10.0})
        clock.now_s += 600.0
        await loop.sync()
        first = (await db.costs()).per_model_usd
        hourly = offering.price_per_hour
        assert sum(first.values()) == pytest.approx(600.0 * hourly / 3600.0)
        assert first[demo.name] == pytest.approx(0.75 * sum(first.values()))
        assert first[other.name] == pytest.approx(0.25 * sum(first.values()))
        clock.now_s += 600.0  # idle: no busy time past what was shared
        await loop.sync()
        costs = await db.costs()
        assert costs.instances_usd == pytest.approx(1200.0 * hourly / 3600.0)
        second = 600.0 * hourly / 3600.0
        assert costs.per_model_usd == pytest.approx(
            {demo.name: first[demo.name] + second / 2, other.name: first[other.name] + second / 2}
        )
    finally:
        await cloud.close()
        await db.close()


async def test_the_front_ends_busy_time_reaches_the_per_model_ledger(tmp_path: Path) -> None:
    """End to end: a front end sends three batches of one model and one of another to one
    real worker serving both; the busy seconds it counted share the instance's charge."""
    demo = load_catalog().model("demo").to_model()
    other = demo.model_copy(update={"name": "demo-b"})
    names = (demo.name, other.name)
    db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'loop.db'}")
    for m in (demo, other):
        await db.create_model(m)
    config = _config()
    cloud = LocalCloud(config.cloud, models=db.get_model, state_dir=tmp_path / "cloud")
    fleet = Fleet(BatchingConfig())
    try:
        offering = next(
            o
            for o in await cloud.offerings()
            if o.instance_type == "c5.large" and o.market.value == "on-demand"
        )
        inst = await cloud.wait_running((await cloud.launch(offering, names)).id, 60.0)
        await db.save_instance(inst)
        fleet.set_models([demo, other])
        fleet.set_instances([inst])
        rows = InferRequest((Tensor.of("input", np.zeros((1, 16), dtype=np.float32)),))
        for name in (demo.name, demo.name, demo.name, other.name):
            answer = await fleet.infer(name, rows)
            assert answer.instance_id == inst.id
        metrics.flush()

        def busy() -> dict[tuple[str, str], float]:  # what `plane.busy_seconds` reads
            series = "mark_instance_busy_seconds_total"
            return {
                (inst.id, m): REGISTRY.get_sample_value(series, {"model": m, "instance": inst.id})
                or 0.0
                for m in names
            }

        recorded = busy()
        assert all(s > 0 for s in recorded.values())
        loop = ControlLoop(db, cloud, config, counts=dict, busy=busy)
        await loop.sync()
        costs = await db.costs()
        assert costs.instances_usd > 0
        total_busy = sum(recorded.values())
        for name in names:
            share = costs.per_model_usd[name] / costs.instances_usd
            assert share == pytest.approx(recorded[(inst.id, name)] / total_busy)
    finally:
        await fleet.close()
        await cloud.close()
        await db.close()
