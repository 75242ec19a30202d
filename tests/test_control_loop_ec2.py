"""The control loop driving EC2 (through moto's server on loopback, real boto3 calls): a stepped
forecast bought ahead on spot over several pools, on-demand fallback when spot is refused, an
interruption replaced at once, scale-in after the step, and reconciliation after a crash."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mark.adapters.db import Database
from mark.apps.control.loop import ControlLoop, Schedule
from mark.core.catalog import load_catalog
from mark.core.config import CloudConfig, Config
from mark.core.types import ActionKind, InstanceState, Market, Model
from provisioner.adapters.ec2 import Ec2Cloud
from tests.aws import ec2_error_xml, inject
from tests.test_ec2 import TYPES, ZONES
from traces import Trace

STEP_RPS = 20.0


def inception() -> Model:
    entry = load_catalog().model("inception-v3")
    model = entry.to_model()
    return model.model_copy(
        update={"profiles": {k: v for k, v in model.profiles.items() if k in TYPES}}
    )


def step_schedule(start_s: float, step_at_s: float, step_len_s: float) -> Schedule:
    """Zero demand, then STEP_RPS for `step_len_s`, then zero again (1-minute buckets)."""
    times = np.arange(start_s, start_s + 3600.0, 60.0)
    rates = np.where((times >= step_at_s) & (times < step_at_s + step_len_s), STEP_RPS, 0.0)
    return Schedule(Trace(timestamps_s=times, counts=rates * 60.0, bucket_s=60.0))


def loop_config(**planner: Any) -> Config:
    return Config.model_validate(
        {
            "cloud": {"provider": "ec2", "image_id": "ami-test", "zones": list(ZONES)},
            "control": {"tick_s": 60.0, "reconcile_grace_s": 120.0, "apply_retries": 0},
            "forecast": {"predictor": "last"},
            "planner": {
                "horizon_s": 300.0,
                "spot_min_pools": 2,
                "spot_max_share": 0.8,
                "allowed_types": list(TYPES),
                "scale_in_hold_s": 120.0,
                "drain_s": 30.0,
                **planner,
            },
        }
    )


class Clock:
    def __init__(self, now_s: float) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def make_cloud(moto_url: str, image_id: str) -> Iterator[Callable[..., Ec2Cloud]]:
    """Providers sharing one owner tag (a restarted control plane is the same owner) that look
    models up in the loop's database, on a clock the test moves."""
    owner = f"loop-{uuid.uuid4().hex[:8]}"
    config = CloudConfig(
        provider="ec2",
        endpoint_url=moto_url,
        zones=ZONES,
        image_id=image_id,
        owner=owner,
        api_max_attempts=1,
    )
    types = [load_catalog().instance_types[t] for t in TYPES]
    clouds: list[Ec2Cloud] = []

    def make(db: Database, clock: Clock) -> Ec2Cloud:
        cloud = Ec2Cloud(config, models=db.get_model, catalog_types=types, clock=clock)
        clouds.append(cloud)
        return cloud

    yield make
    for cloud in clouds:
        cloud.client.close()


async def _setup(
    make_cloud: Callable[..., Ec2Cloud], tmp_path: Path, **planner: Any
) -> tuple[ControlLoop, Ec2Cloud, Database, Clock]:
    db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'loop.db'}")
    await db.create_model(inception())
    clock = Clock(datetime.now(UTC).timestamp())
    cloud = make_cloud(db, clock)
    start = clock()
    loop = ControlLoop(
        db,
        cloud,
        loop_config(**planner),
        counts=dict,
        schedule=step_schedule(start, start + 240.0, 600.0),
        clock=clock,
    )
    return loop, cloud, db, clock


async def _run_until_covered(loop: ControlLoop, clock: Any, ticks: int) -> None:
    for _ in range(ticks):
        await loop.tick()
        await loop.sync()
        clock.now_s += 60.0


def _capacity(instances: list[Any]) -> float:
    from provisioner.policy.capacity import capacity_rps

    model = inception()
    return sum(
        capacity_rps(model.profiles[i.offering.instance_type], model.slo, model.max_batch)
        for i in instances
    )


async def test_stepped_forecast_is_bought_ahead_on_spot_over_pools(
    make_cloud: Callable[..., Ec2Cloud], tmp_path: Path
) -> None:
    loop, cloud, db, clock = await _setup(make_cloud, tmp_path)
    step_at = clock() + 240.0
    await _run_until_covered(loop, clock, 4)  # ticks at +0, +60, +120, +180: before the step
    assert clock() <= step_at
    live = await db.list_instances()
    assert _capacity(live) >= STEP_RPS
    spot = [i for i in live if i.offering.market == Market.SPOT]
    assert spot, "spot is cheaper per request than on-demand here"
    assert len({i.offering.key for i in spot}) >= 2
    pools: dict[str, list[Any]] = {}
    for i in spot:
        pools.setdefault(i.offering.key, []).append(i)
    # The planner's spot rule (provisioner/policy/planner_greedy.py): a pool holds one instance, or
    # several within its share (0.8 / 2 pools); losing any one pool leaves 60% of the step.
    assert all(len(p) == 1 or _capacity(p) <= 0.4 * STEP_RPS + 1e-6 for p in pools.values())
    largest = max(_capacity(p) for p in pools.values())
    assert _capacity(live) - largest >= 0.6 * STEP_RPS - 1e-6
    listed = {i.id for i in await cloud.list()}
    assert {i.id for i in live} == listed
    decisions, _ = await db.list_decisions(limit=200)
    launches = [d for d in decisions if d.action == ActionKind.LAUNCH]
    assert len(launches) == len(live)
    assert all(d.reason and d.offering_key for d in launches)
    await db.close()


async def test_refused_spot_falls_back_to_on_demand(
    make_cloud: Callable[..., Ec2Cloud], tmp_path: Path
) -> None:
    loop, cloud, db, clock = await _setup(make_cloud, tmp_path)
    refusal = ec2_error_xml("InsufficientInstanceCapacity", "There is no Spot capacity available")
    answered = inject(cloud, "RunInstances", refusal, times=100, when="InstanceMarketOptions")
    await _run_until_covered(loop, clock, 4)
    assert answered, "the planner tried spot first"
    live = await db.list_instances()
    assert live and all(i.offering.market == Market.ON_DEMAND for i in live)
    assert _capacity(live) >= STEP_RPS
    decisions, _ = await db.list_decisions(limit=500)
    assert any(d.action == ActionKind.ERROR and "falling back" in d.reason for d in decisions)
    # The refusals live in the planner state, where every re-plan's Offerings sees them.
    refused = loop.state.refused_pools
    assert refused and all(key.endswith("/spot") for key in refused)
    await db.close()


async def test_interruption_is_replaced_at_once_and_step_scaled_in_after(
    make_cloud: Callable[..., Ec2Cloud], tmp_path: Path, outside: Any
) -> None:
    loop, cloud, db, clock = await _setup(make_cloud, tmp_path)
    await _run_until_covered(loop, clock, 5)
    before = await db.list_instances()
    victim = next(i for i in before if i.offering.market == Market.SPOT)
    assert await cloud.poll_interruptions() == []  # the watcher has seen the fleet live
    outside.terminate_instances(InstanceIds=[victim.id])  # AWS reclaims the spot instance
    for notice in await cloud.poll_interruptions():
        await loop.on_interruption(notice)
    await loop.sync()
    after = await db.list_instances()
    replaced = [i for i in after if i.id != victim.id and i.state != InstanceState.DRAINING]
    assert _capacity(replaced) >= STEP_RPS
    assert victim.offering.key not in {
        i.offering.key for i in after if i.id not in {b.id for b in before}
    }
    # the step ends at +840 s; run well past it: everything is drained and terminated
    for _ in range(20):
        clock.now_s += 60.0
        await loop.tick()
        await loop.sync()
    # Scaled in. After minutes of zero requests the forecaster's upper quantile is still ~0.03
    # rps (a Poisson bound on an unseen rate), which the planner covers: with one on-demand
    # instance, or with spot hedged over two pools (two spot c5s cost less than one on-demand).
    left = await db.list_instances()
    assert len(before) >= 5
    assert len(left) <= 1 or (
        len(left) == 2
        and all(i.offering.market == Market.SPOT for i in left)
        and len({i.offering.key for i in left}) == 2
    )
    assert {i.id for i in await cloud.list()} == {i.id for i in left}
    decisions, _ = await db.list_decisions(limit=500)
    kinds = {d.action for d in decisions}
    assert {ActionKind.LAUNCH, ActionKind.DRAIN, ActionKind.TERMINATE} <= kinds
    assert all(d.reason for d in decisions)
    costs = await db.costs()
    assert costs.instances_usd > 0
    await db.close()


async def test_crash_leaves_no_untracked_instance(
    make_cloud: Callable[..., Ec2Cloud], tmp_path: Path
) -> None:
    loop, cloud, db, clock = await _setup(make_cloud, tmp_path)
    offers = await cloud.offerings()
    od = next(o for o in offers if o.market == Market.ON_DEMAND and o.instance_type == "c5.large")
    # crash between RunInstances and the database write: the cloud runs an unrecorded instance
    orphan = await cloud.launch(od, ["inception-v3"])
    # and a recorded one that the cloud lost while the control plane was down
    ghost = await cloud.launch(od, ["inception-v3"])
    await db.save_instance(ghost)
    await cloud.terminate(ghost.id)
    # a new control plane starts after the grace period
    clock.now_s += 600.0
    restarted = ControlLoop(db, make_cloud(db, clock), loop.config, counts=dict, clock=clock)
    await restarted.sync()
    tracked = {i.id for i in await db.list_instances()}
    assert {i.id for i in await restarted.cloud.list()} <= tracked
    assert orphan.id not in {i.id for i in await restarted.cloud.list()}
    assert (await db.get_instance(ghost.id)).state == InstanceState.TERMINATED
    await db.close()
