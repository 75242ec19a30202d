"""Property tests of the planner (hypothesis): random fleets, demands, budgets and prices."""

from __future__ import annotations

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mark.core.types import ActionKind, InstanceState, Market
from provisioner.policy.planner import Drain, Launch, Plan
from tests.test_planner import (
    NOW,
    TYPES,
    ZONES,
    cap,
    forecast,
    instance,
    model,
    offering,
    run,
    snapshot,
)

OVERHEAD_S = 120.0  # every test type's launch overhead

demands = st.lists(st.floats(0.0, 60.0), min_size=5, max_size=5)
running = st.lists(
    st.tuples(st.sampled_from(sorted(TYPES)), st.sampled_from(ZONES), st.booleans()),
    max_size=6,
)
prices = st.lists(st.floats(0.2, 1.5), min_size=len(TYPES), max_size=len(TYPES))


def fleet(data_demands, data_running, price_scale, unavailable):
    offerings = tuple(
        offering(
            t,
            z,
            s,
            price_per_hour=TYPES[t].on_demand_price_per_hour * k * (0.4 if s else 1.0),
            available=(t, z, s) not in unavailable,
        )
        for (t, k) in zip(sorted(TYPES), price_scale, strict=True)
        for z in ZONES
        for s in (False, True)
    )
    by_key = {o.key: o for o in offerings}
    live = [
        instance(f"i-{n}", by_key[f"{t}/{z}/{'spot' if s else 'on-demand'}"])
        for n, (t, z, s) in enumerate(data_running)
    ]
    models = {"resnet": (model(), forecast(*data_demands))}
    return snapshot(models=models, instances=live, offerings=offerings), live


def capacity_by_bucket(p: Plan, live, exclude: set[str]) -> list[float]:
    """Capacity per planning bucket: kept live instances serve at once, launches and deferred
    launches from their overhead on."""
    out = []
    for k in range(5):
        start = NOW + 60.0 * k
        total = sum(cap(i.offering.instance_type) for i in live if i.id not in exclude)
        if start >= NOW + OVERHEAD_S:
            total += sum(a.capacity_rps for a in (*p.deferred, *launches_of(p)))
        out.append(total)
    return out


def launches_of(p: Plan) -> list[Launch]:
    return [a for a in p.actions if isinstance(a, Launch)]


settings_ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@settings_
@given(
    demands,
    running,
    prices,
    st.sets(st.tuples(st.sampled_from(sorted(TYPES)), st.sampled_from(ZONES), st.booleans())),
)
def test_forecast_is_covered_when_the_budget_allows(d, r, k, unavailable) -> None:
    snap, live = fleet(d, r, k, unavailable)
    # On-demand is the fallback the share cap relies on: with none to be had, spot alone may
    # be unable to cover (that case is reported, not covered).
    assume(any(o.available and o.market == Market.ON_DEMAND for o in snap.offerings))
    # The launch caps are lifted here: a binding cap leaves demand uncovered on purpose (the
    # LAUNCH_CAPPED decision says so; tests/test_planner.py checks it).
    p = run(snap, spot_max_share=0.8, spot_min_pools=2, max_launches_per_type_per_tick=1000)
    assert not any(dec.action == ActionKind.BUDGET_LIMITED for dec in p.decisions)
    drained = {a.instance_id for a in p.actions if isinstance(a, Drain)}
    got = capacity_by_bucket(p, live, drained)
    for k_, (have, want) in enumerate(zip(got, d, strict=True)):
        if NOW + 60.0 * k_ >= NOW + OVERHEAD_S:  # buckets a launch made now can still reach
            assert have >= want - 1e-6
    for a in launches_of(p):
        assert a.offering.available
    # Every action has its decision.
    assert len(p.decisions) >= len(p.actions)


@settings_
@given(demands, running, prices, st.floats(0.1, 2.0))
def test_budget_is_never_exceeded(d, r, k, budget) -> None:
    snap, live = fleet(d, r, k, set())
    p = run(snap, budget_per_hour=budget)
    live_spend = sum(i.offering.price_per_hour for i in live)
    new_spend = sum(a.offering.price_per_hour for a in launches_of(p))
    if live_spend <= budget:
        assert live_spend + new_spend <= budget + 1e-9
    else:
        assert new_spend == 0.0


@settings_
@given(demands, running, prices)
def test_needed_instances_are_never_released(d, r, k) -> None:
    snap, live = fleet(d, r, k, set())
    p = run(snap, spot_max_share=1.0, spot_min_pools=1)
    drained = {a.instance_id for a in p.actions if isinstance(a, Drain)}
    if drained:
        # What stays covers the forecast in every bucket before any launch could be ready, and
        # with the launches (made now or deferred to a later tick) in every bucket after.
        kept = [i for i in live if i.id not in drained and i.state == InstanceState.RUNNING]
        remaining = sum(cap(i.offering.instance_type) for i in kept)
        early = [v for k, v in enumerate(d) if 60.0 * k < OVERHEAD_S]
        assert remaining >= max(early) - 1e-6
        for want, have in zip(d, capacity_by_bucket(p, kept, set()), strict=True):
            assert have >= want - 1e-6


@settings_
@given(st.floats(5.0, 200.0), st.floats(0.1, 1.0), st.integers(1, 3))
def test_spot_share_and_pool_spread_are_respected(level, share, pools) -> None:
    snap = snapshot(models={"resnet": (model(), forecast(*[level] * 5))})
    uncapped = {"max_launches_per_tick": 10**6, "max_launches_per_type_per_tick": 10**6}
    p = run(snap, spot_max_share=share, spot_min_pools=pools, **uncapped)
    got = launches_of(p)
    per_pool: dict[str, list[float]] = {}
    for a in got:
        if a.offering.market == Market.SPOT:
            per_pool.setdefault(a.offering.key, []).append(a.capacity_rps)
    # A pool holds one instance of any size, or several within its share of the demand.
    assert all(len(c) == 1 or sum(c) <= share * level / pools + 1e-6 for c in per_pool.values())
    # Spot beyond the first instance of each pool stays within the model's spot share.
    extra = sum(sum(c) - c[0] for c in per_pool.values())
    assert extra <= share * level + 1e-6
    # Hedged: losing the largest spot pool leaves 1 - share / pools of the demand covered.
    total = sum(a.capacity_rps for a in got)
    largest = max((sum(c) for c in per_pool.values()), default=0.0)
    assert total >= level - 1e-6
    assert total - largest >= (1 - share / pools) * level - 1e-6


@settings_
@given(demands, running, prices)
def test_plan_is_deterministic(d, r, k) -> None:
    snap, _ = fleet(d, r, k, set())
    assert run(snap) == run(snap)
