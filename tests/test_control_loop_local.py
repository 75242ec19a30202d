"""The control loop on the local cloud and the local function pool (real sandbox processes):
each tick warms the pool with the plan's count, the pre-warming rule of
`provisioner.policy.prewarm` (what the running fleet leaves of the forecast, at the pool's
latency, plus one); forecasters see whole buckets only, however often the loop re-plans; a
many-model instance's charge is shared among its models by the front end's busy time, as
`GET /admin/v1/costs` reports it; a spot instance pays each period at the price then in force."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
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
from mark.core.types import Market
from provisioner.adapters.local_cloud import LocalCloud
from provisioner.adapters.serverless import LocalFunctionPool
from provisioner.policy.billing import spot_charge_usd
from provisioner.policy.prewarm import warm_functions
from tests.test_admin_api import call
from tests.test_charging import busy_rows
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


@dataclass
class _Shared:
    """One real local worker's instance serving two models, its loop on a clock the test moves,
    and the busy seconds its front end would have counted (set by the test)."""

    db: Database
    loop: ControlLoop
    inst: Any
    offering: Any
    clock: _Clock
    names: tuple[str, str]
    busy: dict[tuple[str, str], float]


@contextlib.asynccontextmanager
async def _shared_instance(db_url: str, tmp_path: Path) -> AsyncIterator[_Shared]:
    demo = load_catalog().model("demo").to_model()
    other = demo.model_copy(update={"name": "demo-b"})
    db = await Database.open(db_url)
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
        yield _Shared(db, loop, inst, offering, clock, (demo.name, other.name), busy)
    finally:
        await cloud.close()
        await db.close()


async def test_a_many_model_instances_charge_is_shared_by_busy_time(tmp_path: Path) -> None:
    """One real local worker serving two models, busy 3:1 in the first period: the ledger
    gives them 75 % and 25 % of it; a second period with no busy time goes half and half."""
    async with _shared_instance(f"sqlite+aiosqlite:///{tmp_path / 'loop.db'}", tmp_path) as x:
        demo, other = x.names
        x.busy.update({(x.inst.id, demo): 30.0, (x.inst.id, other): 10.0})
        x.clock.now_s += 600.0
        await x.loop.sync()
        first = (await x.db.costs()).per_model_usd
        hourly = x.offering.price_per_hour
        assert sum(first.values()) == pytest.approx(600.0 * hourly / 3600.0)
        assert first[demo] == pytest.approx(0.75 * sum(first.values()))
        assert first[other] == pytest.approx(0.25 * sum(first.values()))
        x.clock.now_s += 600.0  # idle: no busy time past what was shared
        await x.loop.sync()
        costs = await x.db.costs()
        assert costs.instances_usd == pytest.approx(1200.0 * hourly / 3600.0)
        second = 600.0 * hourly / 3600.0
        assert costs.per_model_usd == pytest.approx(
            {demo: first[demo] + second / 2, other: first[other] + second / 2}
        )


async def test_the_costs_route_reports_an_instance_shared_3_to_1(
    tmp_path: Path, db_url: str, serve_factory: Any
) -> None:
    """The split read back as operators read it: one real worker serving two models, busy 3:1
    over its life, ended (its final charge) and pruned by the next sync; then `GET
    /admin/v1/costs` of a real `mark serve` on the same database (its control loop off, so
    it charges nothing of its own) gives them 75 % and 25 % of the instance's charge."""
    async with _shared_instance(db_url, tmp_path) as x:
        demo, other = x.names
        for period in (1, 2):  # two periods, each 3:1
            x.busy.update({(x.inst.id, demo): 30.0 * period, (x.inst.id, other): 10.0 * period})
            x.clock.now_s += 600.0
            await x.loop.sync()
        await x.loop.release_all()  # terminated: the final charge
        await x.loop.sync()  # and its busy rows go
        line = (await x.db.instance_charges([x.inst.id]))[x.inst.id]
        assert await busy_rows(x.db) == 0
        offering = x.offering
    assert line.usd == pytest.approx(1200.0 * offering.price_per_hour / 3600.0)

    served = serve_factory(db_url, env={"MARK_CONTROL__ENABLED": "false"})
    status, costs = call(served, "GET", "/admin/v1/costs")
    assert status == 200, costs
    assert costs["instances_usd"] == pytest.approx(line.usd)
    assert costs["per_instance_type_usd"] == pytest.approx({offering.instance_type: line.usd})
    per_model = costs["per_model_usd"]
    assert set(per_model) == {demo, other}
    assert per_model[demo] == pytest.approx(0.75 * line.usd)
    assert per_model[other] == pytest.approx(0.25 * line.usd)
    assert per_model[demo] + per_model[other] == pytest.approx(line.usd, rel=1e-12)


def _spot_price_step(instance_type: str, zone: str, after_s: float) -> float:
    """The first hour boundary after `after_s` at which the catalog's spot price of the pool
    moves by at least 2 % (its history repeats every 48 h, so one is found within that)."""
    catalog = load_catalog()
    hour = (after_s // 3600.0 + 1.0) * 3600.0
    for k in range(48):
        at = hour + 3600.0 * k
        before = catalog.spot_price(instance_type, zone, at - 1.0)
        now = catalog.spot_price(instance_type, zone, at)
        if before and now and abs(now / before - 1.0) >= 0.02:
            return at
    raise AssertionError(f"no spot price move in {instance_type}/{zone}'s history")


async def test_a_spot_instance_pays_each_period_at_the_price_then_in_force(
    tmp_path: Path,
) -> None:
    """A spot instance on the local cloud, whose offerings follow the catalog's spot history on
    the loop's clock, lives across a price move: the ledger charges the time before the move at
    the old price and the time after at the new one (the loop's tick reads the new price, the
    next sync charges by it), which is what EC2 bills and what `billing.spot_charge_usd`
    integrates over the history."""
    model = load_catalog().model("demo").to_model()
    db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'loop.db'}")
    await db.create_model(model)
    config = Config.model_validate(
        {
            "cloud": {"zones": ["us-east-1a"], "launch_overhead_scale": 0.001},
            # No demand at all (the mean, not an upper band over zeros): the planner keeps the
            # one instance for min_instances and buys nothing beside it.
            "forecast": {"predictor": "last", "upper_band": False},
            "planner": {"min_instances": 1},
        }
    )
    move = _spot_price_step("c5.large", "us-east-1a", time.time())
    clock = _Clock(move - 1200.0)
    cloud = LocalCloud(config.cloud, models=db.get_model, state_dir=tmp_path / "cloud", clock=clock)
    catalog = load_catalog()
    old = catalog.spot_price("c5.large", "us-east-1a", move - 1.0)
    new = catalog.spot_price("c5.large", "us-east-1a", move)
    assert old is not None and new is not None
    try:
        offering = next(
            o
            for o in await cloud.offerings()
            if o.instance_type == "c5.large" and o.market == Market.SPOT
        )
        assert offering.price_per_hour == old
        inst = await cloud.wait_running((await cloud.launch(offering, [model.name])).id, 60.0)
        await db.save_instance(inst)
        loop = ControlLoop(db, cloud, config, counts=dict, clock=clock)
        plan = await loop.tick()
        assert plan is not None and not plan.actions  # the planner keeps it as it is
        clock.now_s = move
        await loop.sync()
        before = (await db.instance_charges([inst.id]))[inst.id].usd
        assert before == pytest.approx(1200.0 * old / 3600.0)
        plan = await loop.tick()  # reads the moved price
        assert plan is not None and not plan.actions
        clock.now_s = move + 1800.0
        await loop.sync()
        after = (await db.instance_charges([inst.id]))[inst.id].usd
        assert after - before == pytest.approx(1800.0 * new / 3600.0)
        itype = catalog.instance_type("c5.large")
        billed = spot_charge_usd(
            itype,
            inst.launched_at_s,
            clock.now_s,
            lambda t: catalog.spot_price("c5.large", "us-east-1a", t),
        )
        assert after == pytest.approx(billed)
        assert (await db.costs()).per_model_usd == pytest.approx({model.name: after})
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
