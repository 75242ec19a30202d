"""The greedy planner (provisioner/policy/planner.py) on hand-built snapshots: no clock, no I/O."""

from __future__ import annotations

import dataclasses
import random

import pytest

from mark.core.config import PlannerConfig
from mark.core.types import (
    ActionKind,
    Forecast,
    Instance,
    InstanceState,
    InstanceType,
    Market,
    Model,
    Offering,
    Profile,
    Slo,
)
from provisioner.policy.billing import paid_until_s
from provisioner.policy.capacity import CapacityCache, capacity_rps
from provisioner.policy.planner import (
    Drain,
    FleetSnapshot,
    Launch,
    ModelDemand,
    Plan,
    PlannerState,
    Terminate,
    plan,
)
from provisioner.policy.snapshot import ServerlessTerms, covered_quantile

NOW = 1_700_000_000.0
SLO = Slo(latency_ms=600.0, percentile=0.98)
CACHE = CapacityCache()


def itype(name: str, price: float, **kw: float) -> InstanceType:
    return InstanceType(name=name, vcpus=2, memory_gib=4.0, on_demand_price_per_hour=price, **kw)


TYPES = {
    "c5.large": itype("c5.large", 0.085),
    "c5.xlarge": itype("c5.xlarge", 0.17),
    "m5.large": itype("m5.large", 0.096),
}
# Per-request speed: c5.xlarge is twice a c5.large (two servers) at twice the price;
# m5.large is as fast as a c5.large but dearer.
PROFILES = {
    "c5.large": Profile(instance_type="c5.large", latency_ms={1: 180.0}),
    "c5.xlarge": Profile(instance_type="c5.xlarge", latency_ms={1: 180.0}, parallelism=2),
    "m5.large": Profile(instance_type="m5.large", latency_ms={1: 180.0}),
}
ZONES = ("us-east-1a", "us-east-1b", "us-east-1c")


def offering(type_name: str, zone: str = "us-east-1a", spot: bool = False, **kw) -> Offering:
    price = TYPES[type_name].on_demand_price_per_hour * (0.35 if spot else 1.0)
    return Offering(
        instance_type=type_name,
        zone=zone,
        market=Market.SPOT if spot else Market.ON_DEMAND,
        price_per_hour=kw.pop("price_per_hour", price),
        **kw,
    )


def all_offerings(spot: bool = True) -> tuple[Offering, ...]:
    return tuple(
        offering(t, z, s)
        for t in TYPES
        for z in ZONES
        for s in ((False, True) if spot else (False,))
    )


def model(name: str = "resnet", types: tuple[str, ...] = tuple(PROFILES)) -> Model:
    return Model(name=name, slo=SLO, profiles={t: PROFILES[t] for t in types}, max_batch=1)


def forecast(*upper: float, start_s: float = NOW) -> Forecast:
    return Forecast(start_s=start_s, bucket_s=60.0, mean_rps=upper, upper_rps=upper)


def instance(
    iid: str, off: Offering, name: str = "resnet", state=InstanceState.RUNNING, age_s=600.0
) -> Instance:
    return Instance(
        id=iid,
        offering=off,
        models=(name,),
        state=state,
        launched_at_s=NOW - age_s,
        running_at_s=NOW - age_s + 100 if state != InstanceState.PENDING else None,
        draining_at_s=NOW - 40 if state == InstanceState.DRAINING else None,
    )


def snapshot(models=None, instances=(), offerings=None, **kw) -> FleetSnapshot:
    models = models if models is not None else {"resnet": (model(), forecast(*[10.0] * 5))}
    return FleetSnapshot(
        now_s=kw.pop("now_s", NOW),
        models={n: ModelDemand(model=m, forecast=f) for n, (m, f) in models.items()},
        instances=tuple(instances),
        offerings=offerings if offerings is not None else all_offerings(),
        instance_types=kw.pop("instance_types", TYPES),
        **kw,
    )


def run(snap: FleetSnapshot, **config) -> Plan:
    return plan(snap, PlannerConfig(**config), CACHE)


def cap(type_name: str) -> float:
    return capacity_rps(PROFILES[type_name], SLO, 1)


def launches(p: Plan) -> list[Launch]:
    return [a for a in p.actions if isinstance(a, Launch)]


def test_launches_cover_the_forecast_with_the_cheapest_per_request() -> None:
    p = run(snapshot(), spot=False)
    got = launches(p)
    assert sum(a.capacity_rps for a in got) >= 10.0
    # c5.large and c5.xlarge cost the same per request; m5.large is dearer: never bought.
    assert {a.offering.instance_type for a in got} <= {"c5.large", "c5.xlarge"}
    assert all("$" in d.reason and "rps" in d.reason for d in p.decisions)
    assert [d.action for d in p.decisions] == [ActionKind.LAUNCH] * len(got)


def test_prefers_spot_when_cheaper_within_share_and_pool_spread() -> None:
    demand = 20 * cap("c5.large")
    snap = snapshot(models={"resnet": (model(types=("c5.large",)), forecast(*[demand] * 5))})
    got = launches(run(snap, spot_max_share=0.6, spot_min_pools=3))
    spot = [a for a in got if a.offering.market == Market.SPOT]
    spot_rps = sum(a.capacity_rps for a in spot)
    assert spot and spot_rps <= 0.6 * demand + 1e-6
    pools: dict[str, float] = {}
    for a in spot:
        pools[a.offering.key] = pools.get(a.offering.key, 0.0) + a.capacity_rps
    assert len(pools) >= 3
    assert max(pools.values()) <= 0.6 * demand / 3 + 1e-6
    assert sum(a.capacity_rps for a in got) >= demand - 1e-6


def test_spot_disabled_buys_on_demand_only() -> None:
    got = launches(run(snapshot(), spot=False))
    assert got and all(a.offering.market == Market.ON_DEMAND for a in got)


def test_unavailable_offering_is_skipped() -> None:
    offs = (
        offering("c5.large", available=False),
        offering("c5.large", "us-east-1b", available=False),
        offering("m5.large"),
    )
    got = launches(run(snapshot(offerings=offs), spot=False))
    assert got and {a.offering.key for a in got} == {"m5.large/us-east-1a/on-demand"}


def test_backup_types_only_when_the_primary_cannot_be_had() -> None:
    offs = (offering("c5.large", available=False), offering("m5.large"), offering("c5.xlarge"))
    got = launches(
        run(snapshot(offerings=offs), allowed_types=("c5.large",), backup_types=("m5.large",))
    )
    assert got and {a.offering.instance_type for a in got} == {"m5.large"}
    offs = (offering("c5.large"), offering("m5.large"))
    got = launches(
        run(snapshot(offerings=offs), allowed_types=("c5.large",), backup_types=("m5.large",))
    )
    assert {a.offering.instance_type for a in got} == {"c5.large"}


def test_running_instances_that_are_needed_are_kept() -> None:
    on = offering("c5.large")
    need = 3 * cap("c5.large") * 0.99
    live = [instance(f"i-{k}", on) for k in range(3)]
    snap = snapshot(models={"resnet": (model(), forecast(*[need] * 5))}, instances=live)
    p = run(snap, spot=False)
    assert p.actions == ()


def test_surplus_is_released_only_when_paid_time_ends_and_no_recent_launch() -> None:
    on = offering("c5.large")
    live = [instance(f"i-{k}", on) for k in range(3)]
    models = {"resnet": (model(), forecast(*[cap("c5.large") * 0.9] * 5))}
    p = run(snapshot(models=models, instances=live), spot=False)
    drained = [a for a in p.actions if isinstance(a, Drain)]
    assert len(drained) == 2 and not launches(p)
    # A launch of their type 100 s ago: the scale-in hold keeps them (no launch/release
    # flapping); one of another type does not.
    other = PlannerState(last_launch_s={("resnet", "g4dn.xlarge"): NOW - 100})
    p = run(snapshot(models=models, instances=live, planner_state=other), spot=False)
    assert len([a for a in p.actions if isinstance(a, Drain)]) == 2
    state = PlannerState(last_launch_s={("resnet", "c5.large"): NOW - 100})
    p = run(snapshot(models=models, instances=live, planner_state=state), spot=False)
    assert p.actions == ()
    assert [d.action for d in p.decisions] == [ActionKind.HOLD, ActionKind.HOLD]
    assert "scale-in hold" in p.decisions[0].reason


def test_a_forecast_drop_not_yet_seen_neither_releases_nor_underbuys() -> None:
    on = offering("c5.large")
    live = [instance(f"i-{k}", on) for k in range(3)]
    observed = cap("c5.large") * 2.5  # what the newest bucket showed: three instances' worth
    falling = Forecast(
        start_s=NOW, bucket_s=60.0, mean_rps=(1.0,) * 5, upper_rps=(1.0,) * 5
    )  # a trend extrapolated from a level shift: "it drops to 1 rps"
    seen = falling.model_copy(update={"observed_rps": observed})
    # Without the observation the forecast alone releases two of them ...
    p = run(snapshot(models={"resnet": (model(), falling)}, instances=live), spot=False)
    assert len([a for a in p.actions if isinstance(a, Drain)]) == 2
    # ... with it, all three stay: capacity goes on a drop seen, not on a drop forecast.
    p = run(snapshot(models={"resnet": (model(), seen)}, instances=live), spot=False)
    assert not [a for a in p.actions if isinstance(a, Drain)]
    # And a fleet short of the observed rate buys up to it, whatever the forecast says.
    p = run(snapshot(models={"resnet": (model(), seen)}, instances=live[:1]), spot=False)
    bought = sum(a.capacity_rps for a in launches(p)) + cap("c5.large")
    assert bought >= observed - 1e-6


def test_a_one_bucket_dip_releases_nothing_a_drop_that_lasted_does() -> None:
    """The scale-in window: the newest bucket dipped to one instance's worth, but the rate seen
    over the window peaked at three instances' worth, so all three stay; once the window holds
    only the lower rate, the surplus goes. Never below what the window saw, never more held."""
    on = offering("c5.large")
    live = [instance(f"i-{k}", on) for k in range(3)]
    dip = cap("c5.large") * 0.9
    low = Forecast(
        start_s=NOW, bucket_s=60.0, mean_rps=(dip,) * 5, upper_rps=(dip,) * 5, observed_rps=dip
    )
    p = run(snapshot(models={"resnet": (model(), low)}, instances=live), spot=False)
    assert len([a for a in p.actions if isinstance(a, Drain)]) == 2
    peaked = low.model_copy(update={"observed_peak_rps": cap("c5.large") * 2.5})
    p = run(snapshot(models={"resnet": (model(), peaked)}, instances=live), spot=False)
    assert not [a for a in p.actions if isinstance(a, Drain)] and not launches(p)
    assert sum("scale-in window" in d.reason for d in p.decisions) == 2
    # A window that peaked at 1.5 instances' worth holds one of the two surplus instances.
    partial = low.model_copy(update={"observed_peak_rps": cap("c5.large") * 1.5})
    p = run(snapshot(models={"resnet": (model(), partial)}, instances=live), spot=False)
    assert len([a for a in p.actions if isinstance(a, Drain)]) == 1


def test_the_quantile_covered_is_the_slos_where_no_pool_answers_within_it() -> None:
    slo = Slo(latency_ms=500, percentile=0.98)
    fits = ServerlessTerms(latency_ms=300.0, usd_per_request=1e-5, concurrency=100)
    late = ServerlessTerms(latency_ms=900.0, usd_per_request=1e-5, concurrency=100)
    assert covered_quantile(0.95, slo, fits) == 0.95
    assert covered_quantile(0.95, slo, late) == 0.98
    assert covered_quantile(0.95, slo, None) == 0.98
    assert covered_quantile(0.99, slo, None) == 0.99  # never below the configured one


def test_hourly_billed_instance_is_kept_until_its_hour_ends() -> None:
    hourly = {**TYPES, "c5.large": itype("c5.large", 0.085, billing_granularity_s=3600.0)}
    on = offering("c5.large")
    # Billed from launch (provisioner.policy.billing): i-b's hour ends in 110 s.
    live = [instance("i-a", on, age_s=600.0), instance("i-b", on, age_s=3490.0)]
    models = {"resnet": (model(), forecast(*[cap("c5.large") * 0.5] * 5))}
    p = run(snapshot(models=models, instances=live, instance_types=hourly), spot=False)
    # i-a has ~45 min paid: kept; i-b's hour ends within the release window: drained, unless
    # the greedy needs it (then i-a would be the surplus). Either way no paid time is thrown away.
    drained = [a.instance_id for a in p.actions if isinstance(a, Drain)]
    assert drained in ([], ["i-b"])
    assert any("paid time" in d.reason for d in p.decisions if d.action == ActionKind.HOLD)


def test_interruption_drains_and_replaces_in_another_pool() -> None:
    spot = offering("c5.large", spot=True)
    on = offering("c5.large")
    live = [instance("i-spot", spot), instance("i-od", on)]
    need = 1.5 * cap("c5.large")
    snap = snapshot(
        models={"resnet": (model(types=("c5.large",)), forecast(*[need] * 5))},
        instances=live,
        interruptions={"i-spot": NOW + 120},
    )
    p = run(snap, spot_max_share=1.0, spot_min_pools=1)
    assert Drain("i-spot", "resnet", p.actions[0].reason) == p.actions[0]
    replacement = launches(p)
    assert replacement and all(a.offering.key != spot.key for a in replacement)
    assert spot.key in p.state.preempted_pools


def test_drained_instances_are_terminated_after_drain_time() -> None:
    live = [instance("i-d", offering("c5.large"), state=InstanceState.DRAINING)]
    p = run(snapshot(instances=live), drain_s=30.0, spot=False)
    assert any(isinstance(a, Terminate) and a.instance_id == "i-d" for a in p.actions)
    p = run(snapshot(instances=live), drain_s=300.0, spot=False)
    assert not any(isinstance(a, Terminate) for a in p.actions)


def test_budget_is_never_exceeded_and_the_shortfall_is_logged() -> None:
    demand = 10 * cap("c5.large")
    snap = snapshot(models={"resnet": (model(), forecast(*[demand] * 5))})
    p = run(snap, spot=False, budget_per_hour=0.3)
    assert sum(a.offering.price_per_hour for a in launches(p)) <= 0.3
    limited = [d for d in p.decisions if d.action == ActionKind.BUDGET_LIMITED]
    assert len(limited) == 1 and "uncovered" in limited[0].reason


def test_launch_that_can_wait_for_the_next_tick_is_deferred() -> None:
    # Demand only from +240 s: a launch at the next tick (+60 s, ready +180 s) is in time.
    snap = snapshot(models={"resnet": (model(), forecast(0, 0, 0, 0, 10.0))})
    p = run(snap, spot=False)
    assert not launches(p) and p.deferred
    assert "deferred" in p.deferred[0].reason


def test_model_no_longer_registered_is_drained() -> None:
    live = [instance("i-x", offering("c5.large"), name="gone")]
    p = run(snapshot(instances=live), spot=False)
    assert any(isinstance(a, Drain) and a.instance_id == "i-x" for a in p.actions)


def test_output_is_deterministic_whatever_the_input_order() -> None:
    on = offering("c5.large")
    live = [instance(f"i-{k}", on) for k in range(4)]
    snap = snapshot(instances=live)
    shuffled = list(all_offerings())
    random.Random(3).shuffle(shuffled)
    other = dataclasses.replace(snap, offerings=tuple(shuffled), instances=tuple(live[::-1]))
    assert run(snap) == run(other)


def test_paid_until_follows_the_billing_rules() -> None:
    # Launched 30 s ago: billing runs from the launch, as the ledger records it.
    inst = instance("i-1", offering("c5.large"), state=InstanceState.PENDING, age_s=30.0)
    per_second = TYPES["c5.large"]
    assert paid_until_s(inst, per_second, NOW) == pytest.approx(NOW + 30.0)  # 60 s minimum
    assert paid_until_s(inst, per_second, NOW + 100) == pytest.approx(NOW + 100)
    hourly = itype("c5.large", 0.085, billing_granularity_s=3600.0)
    assert paid_until_s(inst, hourly, NOW) == pytest.approx(NOW - 30 + 3600)


# A cost-efficient type that is slow to launch (an accelerator) and a small one that is quick.
BIG = itype("big", 0.5, launch_overhead_s=210.0)
SMALL = itype("small", 0.34, launch_overhead_s=110.0)
SIZED = {"big": BIG, "small": SMALL}
SIZED_PROFILES = {
    "big": Profile(instance_type="big", latency_ms={1: 180.0}, parallelism=20),
    "small": Profile(instance_type="small", latency_ms={1: 180.0}),
}


def sized_offering(name: str, zone: str = "us-east-1a", spot: bool = False) -> Offering:
    price = SIZED[name].on_demand_price_per_hour * (0.35 if spot else 1.0)
    market = Market.SPOT if spot else Market.ON_DEMAND
    return Offering(instance_type=name, zone=zone, market=market, price_per_hour=price)


def sized_snapshot(
    mean: float, upper: float, instances=(), spot: bool = False, types=SIZED
) -> FleetSnapshot:
    m = Model(name="nasnet", slo=SLO, profiles=SIZED_PROFILES, max_batch=1)
    f = Forecast(start_s=NOW, bucket_s=60.0, mean_rps=(mean,) * 5, upper_rps=(upper,) * 5)
    offerings = tuple(
        sized_offering(n, z, s) for n in SIZED for z in ZONES for s in (False, True)[: 1 + spot]
    )
    return FleetSnapshot(
        now_s=NOW,
        models={"nasnet": ModelDemand(model=m, forecast=f)},
        instances=tuple(instances),
        offerings=offerings,
        instance_types=types,
    )


def test_a_near_term_tail_buys_no_stopgaps_only_efficient_capacity_for_later() -> None:
    big_rps = capacity_rps(SIZED_PROFILES["big"], SLO, 1)
    live = instance("i-big", sized_offering("big"), name="nasnet")
    snap = sized_snapshot(mean=0.9 * big_rps, upper=1.1 * big_rps, instances=[live])
    # The tail of the forecast (upper > capacity, mean within it) in buckets before a big
    # instance could be ready is not covered by small ones costing ~14x more per request...
    got = launches(run(snap, spot=False))
    assert [a.offering.instance_type for a in got] == ["big"]
    # ...which is what covering the upper quantile everywhere did.
    stopgaps = launches(run(snap, spot=False, tail_after_lead=False))
    assert "small" in {a.offering.instance_type for a in stopgaps}


def test_spot_is_hedged_across_pools_when_one_instance_exceeds_a_pool_share() -> None:
    big_rps = capacity_rps(SIZED_PROFILES["big"], SLO, 1)
    instant = {n: t.model_copy(update={"launch_overhead_s": 0.0}) for n, t in SIZED.items()}
    snap = sized_snapshot(mean=0.5 * big_rps, upper=0.5 * big_rps, spot=True, types=instant)
    got = launches(run(snap, spot_max_share=0.8, spot_min_pools=2))
    # One big instance holds more than a pool's share (0.4 of demand): instead of falling back to
    # on-demand, spot is bought in two pools, so losing either leaves the demand covered, for
    # 0.7 of one on-demand instance's price.
    assert [a.offering.market for a in got] == [Market.SPOT, Market.SPOT]
    assert len({a.offering.key for a in got}) == 2
    assert sum(a.offering.price_per_hour for a in got) < BIG.on_demand_price_per_hour


def test_a_live_spot_instance_is_priced_at_its_pool_s_current_price() -> None:
    # The pool's spot price fell since launch: EC2 bills the live instance at the new price
    # too, so keeping it beats launching an identical one in the same pool.
    launched = offering("c5.large", "us-east-1a", spot=True, price_per_hour=0.04)
    live = [instance("i-spot", launched)]
    cheaper = offering("c5.large", "us-east-1a", spot=True, price_per_hour=0.03)
    demand = 0.5 * cap("c5.large")
    # Launches are ready at once here, so a new instance serves every bucket the live one does
    # and only the price tells them apart.
    instant = {n: t.model_copy(update={"launch_overhead_s": 0.0}) for n, t in TYPES.items()}
    snap = snapshot(
        models={"resnet": (model(types=("c5.large",)), forecast(*[demand] * 5))},
        instances=live,
        offerings=(cheaper, offering("c5.large", "us-east-1b")),
        instance_types=instant,
    )
    p = run(snap, spot_max_share=1.0, spot_min_pools=1)
    assert not launches(p)
    assert not [a for a in p.actions if isinstance(a, Drain)]


def test_the_hedge_buys_no_stopgaps_before_the_efficient_type_can_be_ready() -> None:
    big_rps = capacity_rps(SIZED_PROFILES["big"], SLO, 1)
    live = instance("i-big", sized_offering("big", "us-east-1a", spot=True), name="nasnet")
    snap = sized_snapshot(mean=0.5 * big_rps, upper=0.5 * big_rps, instances=[live], spot=True)
    got = launches(run(snap, spot_max_share=0.8, spot_min_pools=2))
    # The live instance covers the demand; the hedge against losing its pool is a big spot
    # instance in another pool, for the buckets it can reach, not small ones before that.
    assert [(a.offering.instance_type, a.offering.market) for a in got] == [("big", Market.SPOT)]
    assert got[0].offering.zone != "us-east-1a"


def test_launches_per_tick_and_per_type_are_capped_and_the_rest_reported() -> None:
    """A surge that wants some 60 instances at once gets at most the caps this tick (the next
    ticks buy the rest, spill covers the gap meanwhile); the decision log says what was left
    out."""
    demand = 150 * cap("c5.large")
    snap = snapshot(models={"resnet": (model(), forecast(*[demand] * 5))})
    uncapped = launches(run(snap, spot=False, max_launches_per_tick=1000,
                            max_launches_per_type_per_tick=1000))  # fmt: skip
    assert len(uncapped) > 25
    for per_tick, per_type in ((10, 1000), (1000, 15)):
        p = run(
            snap,
            spot=False,
            max_launches_per_tick=per_tick,
            max_launches_per_type_per_tick=per_type,
        )
        got = launches(p)
        by_type: dict[str, int] = {}
        for a in got:
            by_type[a.offering.instance_type] = by_type.get(a.offering.instance_type, 0) + 1
        assert len(got) == min(per_tick, len(uncapped)) or max(by_type.values()) == per_type
        assert len(got) <= per_tick and max(by_type.values()) <= per_type
        (capped,) = [d for d in p.decisions if d.action == ActionKind.LAUNCH_CAPPED]
        left = len(uncapped) - len(got)
        assert f"{left} launch(es)" in capped.reason and "uncovered" in capped.reason


def _surge_snapshot(usd_per_request: float) -> FleetSnapshot:
    """One big instance live, and the mean forecast jumps now to 1.6 of its capacity: the big
    type cannot be ready before the fifth bucket, small stopgaps could from the third."""
    big_rps = capacity_rps(SIZED_PROFILES["big"], SLO, 1)
    live = instance("i-big", sized_offering("big"), name="nasnet")
    snap = sized_snapshot(mean=1.6 * big_rps, upper=1.6 * big_rps, instances=[live])
    pool = ServerlessTerms(latency_ms=300.0, usd_per_request=usd_per_request, concurrency=1000)
    return dataclasses.replace(snap, serverless=pool)


def test_a_surge_spills_where_serverless_is_cheaper_than_stopgaps() -> None:
    # Lambda's price at 300 ms and 3 GB, about $1.5e-5 per request: a small stopgap, which pays
    # its boot and billing minimum to serve two buckets before the big one is ready, costs more.
    p = run(_surge_snapshot(1.5e-5), spot=False)
    assert [a.offering.instance_type for a in launches(p)] == ["big"]
    (spill,) = [d for d in p.decisions if d.action == ActionKind.PLAN_SPILL]
    assert "serverless pool" in spill.reason and spill.expected_cost_usd > 0
    # With the pool switched off in the planner, or priced far above a stopgap, it buys them.
    for dear in (run(_surge_snapshot(1.5e-5), spot=False, weigh_serverless=False),
                 run(_surge_snapshot(1e-2), spot=False)):  # fmt: skip
        got = [a.offering.instance_type for a in launches(dear)]
        assert "big" in got and "small" in got
        assert not [d for d in dear.decisions if d.action == ActionKind.PLAN_SPILL]


def test_serverless_too_slow_for_the_slo_or_too_small_is_not_spilled_to() -> None:
    slow = _surge_snapshot(1e-9)
    assert slow.serverless is not None
    for pool in (
        dataclasses.replace(slow.serverless, latency_ms=SLO.latency_ms + 1.0),
        dataclasses.replace(slow.serverless, concurrency=1),  # carries ~3 rps of the surge
    ):
        got = launches(run(dataclasses.replace(slow, serverless=pool), spot=False))
        assert "small" in [a.offering.instance_type for a in got]


def test_a_surge_past_the_pools_concurrency_spills_what_it_carries_and_buys_the_rest() -> None:
    """The surge's gap (0.6 of the big instance) is about twice what the pool's concurrency
    carries: the pool is planned full and stopgaps are bought for the rest only, about half of
    what the planner buys when it does not weigh the pool."""
    snap = _surge_snapshot(1.5e-5)
    assert snap.serverless is not None
    gap_rps = 0.6 * capacity_rps(SIZED_PROFILES["big"], SLO, 1)
    concurrency = max(1, round(0.5 * gap_rps * snap.serverless.latency_ms / 1000.0))
    snap = dataclasses.replace(
        snap, serverless=dataclasses.replace(snap.serverless, concurrency=concurrency)
    )
    assert snap.serverless is not None
    uncapped = {"max_launches_per_tick": 1000, "max_launches_per_type_per_tick": 1000}
    p = run(snap, spot=False, **uncapped)
    alone = run(snap, spot=False, weigh_serverless=False, **uncapped)
    small = [a for a in launches(p) if a.offering.instance_type == "small"]
    small_alone = [a for a in launches(alone) if a.offering.instance_type == "small"]
    assert small and len(small) < len(small_alone)
    stopgap_rps = sum(a.capacity_rps for a in small)
    assert stopgap_rps + snap.serverless.max_rps >= gap_rps * (1 - 1e-9)
    (spill,) = [d for d in p.decisions if d.action == ActionKind.PLAN_SPILL]
    assert "serverless pool" in spill.reason


def test_spot_stays_within_its_share_at_scale_whatever_the_number_of_pools() -> None:
    """Thirty big instances' worth of demand; spot in three zones of big and of a second type
    whose spot price beats big on-demand (as g4dn spot beats inf1 on-demand). The first instance
    of a pool may overshoot the share, but once it is spent no first instance of yet another
    pool is bought, so spot carries about spot_max_share of the demand and on-demand the rest."""
    big_rps = capacity_rps(SIZED_PROFILES["big"], SLO, 1)
    mid = itype("mid", 0.9, launch_overhead_s=0.0)
    types = {n: t.model_copy(update={"launch_overhead_s": 0.0}) for n, t in SIZED.items()}
    types["mid"] = mid
    profiles = {
        **SIZED_PROFILES,
        "mid": SIZED_PROFILES["big"].model_copy(update={"instance_type": "mid"}),
    }
    m = Model(name="nasnet", slo=SLO, profiles=profiles, max_batch=1)
    demand = 30 * big_rps
    f = Forecast(start_s=NOW, bucket_s=60.0, mean_rps=(demand,) * 5, upper_rps=(demand,) * 5)
    offerings = tuple(
        Offering(
            instance_type=n,
            zone=z,
            market=Market.SPOT if s else Market.ON_DEMAND,
            price_per_hour=types[n].on_demand_price_per_hour * (0.35 if s else 1.0),
        )
        for n in types
        for z in ZONES
        for s in (False, True)
    )
    snap = FleetSnapshot(
        now_s=NOW,
        models={"nasnet": ModelDemand(model=m, forecast=f)},
        instances=(),
        offerings=offerings,
        instance_types=types,
    )
    got = launches(run(snap, spot_max_share=0.8, spot_min_pools=2, max_launches_per_tick=1000,
                       max_launches_per_type_per_tick=1000))  # fmt: skip
    spot = sum(a.capacity_rps for a in got if a.offering.market == Market.SPOT)
    assert sum(a.capacity_rps for a in got) >= demand * (1 - 1e-9)
    assert 0.7 * demand <= spot <= 0.8 * demand + big_rps + 1e-6, spot / demand


def test_the_budget_leaves_room_for_the_spill_the_plan_expects() -> None:
    """The surge case spills 64 rps for four of five buckets at $15/M requests, about $2.8/h
    averaged over the horizon: a budget with room for the live and the new big instance
    ($1/h) but not for that spill buys nothing; one with room for both buys the big one."""
    roomy = run(_surge_snapshot(1.5e-5), spot=False, budget_per_hour=5.0)
    assert [a.offering.instance_type for a in launches(roomy)] == ["big"]
    assert [d for d in roomy.decisions if d.action == ActionKind.PLAN_SPILL]
    tight = run(_surge_snapshot(1.5e-5), spot=False, budget_per_hour=2.0)
    assert not launches(tight)
    assert [d for d in tight.decisions if d.action == ActionKind.BUDGET_LIMITED]
    # Without the pool's spill to pay for, the same budget buys the big instance.
    alone = run(_surge_snapshot(1.5e-5), spot=False, budget_per_hour=2.0, weigh_serverless=False)
    assert "big" in [a.offering.instance_type for a in launches(alone)]
