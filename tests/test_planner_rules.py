"""The planner's single-home rules on plain values: how a plan's actions become fleet
operations, the offerings collection with refused and preempted pools, the bucket rule, the
snapshot builder and the pre-warming count. No clock, no I/O."""

from __future__ import annotations

import pytest

from mark.core.config import PlannerConfig
from mark.core.types import Forecast, Instance, InstanceState, InstanceType, Market, Model
from provisioner.policy.actions import (
    Drain,
    Launch,
    OperationKind,
    Terminate,
    fleet_operations,
)
from provisioner.policy.offerings import Offerings, cooling_pools
from provisioner.policy.planner import plan
from provisioner.policy.prewarm import warm_functions
from provisioner.policy.snapshot import (
    PlannerState,
    ServerlessTerms,
    build_snapshot,
    forecast_buckets,
    whole_buckets,
)
from tests.test_planner import CACHE, NOW, TYPES, all_offerings, cap, forecast, model, offering


def _instance(iid: str, state: InstanceState) -> Instance:
    return Instance(
        id=iid,
        offering=offering("c5.large"),
        models=("resnet",),
        state=state,
        launched_at_s=NOW - 300.0,
        running_at_s=None if state == InstanceState.PENDING else NOW - 200.0,
        draining_at_s=NOW - 10.0 if state == InstanceState.DRAINING else None,
        terminated_at_s=NOW - 5.0 if state == InstanceState.TERMINATED else None,
    )


def test_fleet_operations_follow_the_live_semantics() -> None:
    fleet = {
        i.id: i
        for i in (
            _instance("run", InstanceState.RUNNING),
            _instance("pend", InstanceState.PENDING),
            _instance("drn", InstanceState.DRAINING),
            _instance("gone", InstanceState.TERMINATED),
            _instance("run2", InstanceState.RUNNING),
        )
    }
    launch = Launch("resnet", offering("c5.large"), "more", 0.01)
    actions = (
        Drain("run", "resnet", "surplus"),
        Drain("pend", "resnet", "surplus"),
        Drain("drn", "resnet", "again"),
        Terminate("gone", "resnet", "already gone"),
        Terminate("missing", "resnet", "never known"),
        launch,
        Terminate("drn", "resnet", "drain over"),
        Terminate("run2", "resnet", "now"),
        Drain("run2", "resnet", "twice"),
    )
    ops = [
        (op.kind, op.instance.id if op.instance else None)
        for op in fleet_operations(actions, fleet)
    ]
    assert ops == [
        (OperationKind.DRAIN, "run"),  # RUNNING -> DRAINING: finishes its queue
        (OperationKind.TERMINATE, "pend"),  # a pending one holds no queue
        (OperationKind.LAUNCH, None),
        (OperationKind.TERMINATE, "drn"),
        (OperationKind.TERMINATE, "run2"),  # Terminate means now, whatever the state
    ]


def test_offerings_avoid_refused_and_preempted_pools() -> None:
    spot_a = offering("c5.large", "us-east-1a", spot=True)
    spot_b = offering("c5.large", "us-east-1b", spot=True, price_per_hour=0.04)
    listed = (offering("c5.large"), spot_a, spot_b, offering("m5.large", available=False))
    offers = Offerings.of(listed, [spot_b.key])
    assert offers.available() == (listed[0], spot_a)
    assert offers.cheapest(market=Market.SPOT) == spot_a
    assert offers.cheapest("c5.large") == spot_a
    assert offers.cheapest("c5.large", prefer_not=[spot_a.key]) == listed[0]
    assert offers.cheapest("m5.large") is None
    assert offers.prices()[spot_b.key] == 0.04  # a live instance there still pays it
    assert cooling_pools({"a": NOW - 10.0, "b": NOW - 700.0}, NOW, 600.0) == {"a": NOW - 10.0}


def test_a_refused_pool_is_avoided_by_the_replan_until_its_cooldown_ends() -> None:
    models = [model()]
    forecasts = {"resnet": forecast(*[cap("c5.large") * 0.5] * 5)}
    config = PlannerConfig(allowed_types=("c5.large",), spot_min_pools=1)

    def first_launch(state: PlannerState, now_s: float) -> tuple[str, PlannerState]:
        snap = build_snapshot(
            now_s,
            models,
            {"resnet": forecasts["resnet"].model_copy(update={"start_s": now_s})},
            instances=(),
            offerings=all_offerings(),
            instance_types=TYPES,
            tick_s=60.0,
            state=state,
        )
        result = plan(snap, config, CACHE)
        launches = [a for a in result.actions if isinstance(a, Launch)]
        return launches[0].offering.key, result.state

    chosen, state = first_launch(PlannerState(), NOW)
    refused = state.with_refusal(chosen, NOW)
    fallback, carried = first_launch(refused, NOW)
    assert fallback != chosen
    assert carried.refused_pools == {chosen: NOW}  # carried to the next tick
    later, after = first_launch(carried, NOW + config.pool_cooldown_s)
    assert later == chosen and after.refused_pools == {}


def test_forecasters_observe_only_whole_buckets() -> None:
    assert whole_buckets(NOW, NOW + 30.0, 60.0) == 0  # a re-plan mid-bucket
    assert whole_buckets(NOW, NOW + 59.99, 60.0) == 1  # a tick a hair early
    assert whole_buckets(NOW, NOW + 125.0, 60.0) == 2
    assert forecast_buckets(300.0, 60.0) == 5
    assert forecast_buckets(301.0, 60.0) == 6


def test_snapshot_keeps_live_instances_and_one_demand_per_model() -> None:
    m: Model = model()
    f: Forecast = forecast(1.0)
    live = _instance("run", InstanceState.RUNNING)
    snap = build_snapshot(
        NOW,
        [m],
        {m.name: f},
        instances=[live, _instance("gone", InstanceState.TERMINATED)],
        offerings=all_offerings(),
        instance_types=TYPES,
        tick_s=30.0,
        interruptions={"run": NOW + 120.0},
    )
    assert snap.instances == (live,)
    assert snap.models[m.name].forecast == f and snap.tick_s == 30.0
    assert snap.interruptions == {"run": NOW + 120.0}
    assert snap.serverless is None


def test_warm_count_covers_what_running_capacity_leaves_at_the_pool_latency() -> None:
    assert warm_functions(10.0, 4.0, 500.0) == 4  # 6 rps x 0.5 s = 3 busy, plus one
    assert warm_functions(2.0, 4.0, 500.0) == 1  # covered: one kept warm
    c5 = cap("c5.large")
    running = _instance("run", InstanceState.RUNNING)
    pending = _instance("pend", InstanceState.PENDING)
    snap = build_snapshot(
        NOW,
        [model()],
        {"resnet": forecast(c5 * 3.0)},
        instances=[running, pending],
        offerings=all_offerings(),
        instance_types=TYPES,
        tick_s=60.0,
        serverless=ServerlessTerms(400.0, 1e-5, 100),
    )
    result = plan(snap, PlannerConfig(), CACHE)
    # The pending instance does not serve yet: the pool takes two instances' worth.
    assert result.warm_functions == {"resnet": warm_functions(c5 * 3.0, c5, 400.0)}
    assert result.warm_functions["resnet"] >= 2


def test_billing_rounding_has_one_home() -> None:
    from provisioner.policy import billing

    hourly = InstanceType(
        name="h",
        vcpus=2,
        memory_gib=4.0,
        on_demand_price_per_hour=1.0,
        billing_granularity_s=3600.0,
    )
    inst = _instance("run", InstanceState.RUNNING)
    assert billing.billed_from_s(inst) == inst.launched_at_s
    life_s = NOW - billing.billed_from_s(inst)
    price = inst.offering.price_per_hour
    assert billing.period_charge_usd(hourly, 0.0, life_s, price) == pytest.approx(price)
    # a later period within the paid hour adds nothing; one past it adds the next hour
    assert billing.period_charge_usd(hourly, life_s, life_s + 1.0, price) == 0.0
    assert billing.period_charge_usd(hourly, life_s, 3600.0 + 1.0, price) == pytest.approx(price)
    assert billing.paid_until_s(inst, hourly, NOW) == inst.launched_at_s + 3600.0
    # Spot over two price steps, rounded once on the total.
    assert billing.spot_charge_usd(
        TYPES["c5.large"], 3000.0, 4200.0, lambda t: 0.036 if t < 3600.0 else 0.072
    ) == pytest.approx((600 * 0.036 + 600 * 0.072) / 3600.0)
    assert billing.spot_charge_usd(TYPES["c5.large"], 0.0, 10.0, lambda t: None) == pytest.approx(
        60 * 0.085 / 3600.0
    )
