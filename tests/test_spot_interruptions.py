"""Spot as it fails (issue 15, item 7): interruption rates from the Spot Advisor's bands, the
count of interruptions against rate x instance-hours, and one pool reclaimed whole with its
2-minute notice, which Mark rides through without losing a request."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from mark.apps.cli import build_parser
from mark.apps.simulator.engine import SimSettings, run_policy
from mark.apps.simulator.policies.base import PolicyContext, PolicyDecision
from mark.apps.simulator.runner import Scenario, simulate
from mark.apps.simulator.sim_state import ADVISOR, PEAK
from mark.apps.simulator.workload import Arrivals
from mark.core.catalog import DEFAULT_DIRECTORY, SPOT_ADVISOR_FILE, band_rate_per_hour, load_catalog
from mark.core.errors import InvalidValue
from mark.core.types import Market, Model, Offering
from provisioner.policy.actions import Action, Launch
from traces import Trace

CATALOG = load_catalog()
TYPE = "c5.large"
START_S = 1_700_000_000.0


def _model() -> Model:
    model = CATALOG.model("inception-v3").to_model()
    return model.model_copy(update={"profiles": {TYPE: model.profiles[TYPE]}})


def _trace(minutes: int, rate_rps: float) -> Trace:
    times = START_S + 60.0 * np.arange(minutes)
    return Trace(timestamps_s=times, counts=np.full(minutes, rate_rps * 60.0), bucket_s=60.0)


@dataclass(frozen=True)
class _Hold:
    """Buys `per_zone` spot instances in each zone at the start and never acts again; logs what
    every decision sees of the notices (instance id -> reclaim time) and of the fleet."""

    per_zone: tuple[tuple[str, int], ...]
    log: list[tuple[float, dict[str, float], dict[str, str]]] = field(default_factory=list)
    name: str = "hold"
    interval_s: float = 10.0
    spill: bool = False
    batching: bool = True
    interruptible: bool = True
    terminates_drained: bool = False

    def initial_state(self) -> bool:
        return False

    def price_per_hour(self, offering: Offering) -> float:
        return offering.price_per_hour

    def decide(self, ctx: PolicyContext, state: Any) -> PolicyDecision:
        pools = {i.id: i.offering.key for i in ctx.instances}
        self.log.append((ctx.now_s, dict(ctx.interruptions), pools))
        actions: list[Action] = []
        if not state:
            for zone, count in self.per_zone:
                offering = next(
                    o
                    for o in ctx.offerings.listed
                    if o.instance_type == TYPE and o.zone == zone and o.market == Market.SPOT
                )
                actions += [Launch(ctx.model.name, offering, "hold", 0.0)] * count
        return PolicyDecision(tuple(actions), True)


def _hold_run(policy: _Hold, trace: Trace, settings: SimSettings) -> Any:
    return run_policy(
        policy,
        _model(),
        Arrivals(trace, seed=settings.seed),
        CATALOG,
        settings,
        serverless_latency_ms=0.0,
        serverless_memory_mb=3008,
    )


# --- the Spot Advisor's bands -----------------------------------------------------------------


def test_advisor_rate_per_type_is_the_band_in_the_data_file() -> None:
    data = json.loads((DEFAULT_DIRECTORY / SPOT_ADVISOR_FILE).read_text(encoding="utf-8"))
    assert data["estimated"] is True
    assert "instance-advisor" in CATALOG.sources[SPOT_ADVISOR_FILE]
    advisor = SimSettings(interruption_rate_per_hour=ADVISOR)
    assert set(data["bands"]) == set(CATALOG.instance_types)
    for type_name, band in data["bands"].items():
        rate = band_rate_per_hour(band)
        assert CATALOG.interruption_rate_per_hour(type_name) == rate
        assert advisor.interruption_rate(CATALOG, type_name) == rate
        # A number keeps its meaning: one rate for every type.
        assert (
            SimSettings(interruption_rate_per_hour=0.3).interruption_rate(CATALOG, type_name) == 0.3
        )
    # Upper edge / 730 h; the open top band at its stated stress value (40% a month).
    assert band_rate_per_hour("<5%") == pytest.approx(0.05 / 730)
    assert band_rate_per_hour("15-20%") == pytest.approx(0.20 / 730)
    assert band_rate_per_hour(">20%") == pytest.approx(0.40 / 730)
    # The default stress rate is far above even the worst band.
    assert SimSettings().interruption_rate(CATALOG, TYPE) > 30 * band_rate_per_hour(">20%")
    with pytest.raises(InvalidValue, match="band"):
        band_rate_per_hour("20-25%")


def test_advisor_rates_reach_the_simulated_instances() -> None:
    """Under `advisor` the engine draws each spot instance's notice at its type's band rate:
    the expected count it reports is that rate x the instance-hours held."""
    policy = _Hold((("us-east-1a", 4),))
    run = _hold_run(policy, _trace(60, 0.0), SimSettings(interruption_rate_per_hour=ADVISOR))
    rate = band_rate_per_hour(CATALOG.interruption_bands[TYPE])
    assert run.extra["spot_instance_hours"] == pytest.approx(4.0)
    assert run.extra["interruptions_expected"] == pytest.approx(4.0 * rate)


def test_cli_takes_advisor_and_a_reclaim_time() -> None:
    common = ["simulate", "--trace", "t.csv", "--model", "inception-v3", "--out", "o"]
    args = build_parser().parse_args([*common, "--interruption-rate", "advisor"])
    assert args.interruption_rate == ADVISOR and args.reclaim_pool_at is None
    args = build_parser().parse_args(
        [*common, "--interruption-rate", "0.5", "--reclaim-pool-at", "1.5"]
    )
    assert args.interruption_rate == 0.5 and args.reclaim_pool_at == 5400.0
    args = build_parser().parse_args([*common, "--reclaim-pool-at", "peak"])
    assert args.reclaim_pool_at == PEAK


# --- the count against rate x hours -----------------------------------------------------------


def test_interruptions_counted_match_rate_times_hours_within_poisson_noise() -> None:
    """300 spot instances held 6 h at 0.1 per hour, none replaced: each is interrupted with
    probability 1 - exp(-0.6), so 135.4 are expected (sd 8.6); the count and the engine's own
    rate x exposed hours both agree with that within 4 sd. An instance that was never drawn a
    notice, or one counted twice, would move the count by far more than the noise."""
    n, rate, hours = 300, 0.1, 6.0
    policy = _Hold((("us-east-1a", 100), ("us-east-1b", 100), ("us-east-1c", 100)))
    settings = SimSettings(window_s=60.0, seed=5, interruption_rate_per_hour=rate)
    run = _hold_run(policy, _trace(int(hours * 60), 0.0), settings)
    p = 1.0 - math.exp(-rate * hours)
    mean, sd = n * p, math.sqrt(n * p * (1.0 - p))
    observed = run.extra["interrupted"]
    assert abs(observed - mean) < 4 * sd
    expected = run.extra["interruptions_expected"]
    assert expected == pytest.approx(mean, rel=0.1)
    assert abs(observed - expected) < 4 * math.sqrt(expected)
    # rate x the spot instance-hours billed: the same within the notices' two minutes each.
    assert rate * run.extra["spot_instance_hours"] == pytest.approx(expected, rel=0.01)


# --- one pool reclaimed whole -----------------------------------------------------------------


def test_pool_reclaim_notices_every_instance_of_the_largest_pool_and_no_other() -> None:
    policy = _Hold((("us-east-1a", 3), ("us-east-1b", 6), ("us-east-1c", 2)))
    event_s = 600.0
    settings = SimSettings(seed=2, interruption_rate_per_hour=0.0, pool_reclaim_at_s=event_s)
    run = _hold_run(policy, _trace(30, 20.0), settings)
    report = run.extra["pool_reclaim"]
    pool = f"{TYPE}/us-east-1b/spot"
    notice_s, reclaim_s = START_S + event_s, START_S + event_s + 120.0
    assert report["pool"] == pool
    assert report["instances_reclaimed"] == 6
    assert (report["notice_s"], report["reclaim_s"]) == (notice_s, reclaim_s)
    assert run.extra["interrupted"] == 6
    before = [entry for entry in policy.log if entry[0] < notice_s]
    during = [entry for entry in policy.log if notice_s <= entry[0] < reclaim_s]
    after = [entry for entry in policy.log if entry[0] >= reclaim_s]
    assert before and during and after
    assert all(not notices for _, notices, _ in before)
    _, _, fleet = before[-1]
    in_pool = {i for i, key in fleet.items() if key == pool}
    for _, notices, _ in during:
        # Every instance of the pool has its notice, each taken back 120 s after it, and no
        # instance of another pool has one.
        assert notices == dict.fromkeys(in_pool, reclaim_s)
    for _, notices, now_fleet in after:
        assert not notices
        assert set(now_fleet) == set(fleet) - in_pool
    assert report["window_s"] == 900.0
    assert report["requests"] > 0


def test_mark_spot_loses_no_request_when_a_pool_is_reclaimed_at_the_peak() -> None:
    """Mark-spot on a 40-minute trace whose busiest minute is at 20 minutes, on c5.large only
    (a dozen spot instances over three pools): the pool with the most capacity is reclaimed
    there with its notice; the planner drains and replaces it on the notice, the data plane
    spills the gap, and no request is lost, through the event or over the run."""
    rates = np.full(40, 55.0)
    rates[20] = 60.0
    times = START_S + 60.0 * np.arange(rates.size)
    trace = Trace(timestamps_s=times, counts=rates * 60.0, bucket_s=60.0)
    entry = CATALOG.model("inception-v3")
    scenario = Scenario(
        model=_model(),
        trace=trace,
        catalog=CATALOG,
        market="spot",
        settings=SimSettings(
            seed=4, types=(TYPE,), interruption_rate_per_hour=0.0, pool_reclaim_at_s=PEAK
        ),
        serverless_latency_ms=entry.serverless_latency_ms,
        serverless_memory_mb=entry.serverless_memory_mb,
    )
    (run,) = simulate(scenario, ["mark"])
    report = run.extra["pool_reclaim"]
    assert run.name == "mark-spot"
    assert report["notice_s"] == START_S + 20 * 60.0
    assert report["pool"].endswith("/spot")
    assert report["instances_reclaimed"] >= 3
    assert run.extra["interrupted"] == report["instances_reclaimed"]
    assert report["requests"] > 0
    assert report["failed"] == 0
    assert run.failed == 0
    assert report["slo_attainment"] >= scenario.model.slo.percentile


def test_pool_reclaim_outside_the_trace_is_refused() -> None:
    settings = SimSettings(pool_reclaim_at_s=3600.0)
    with pytest.raises(InvalidValue, match="pool_reclaim_at_s"):
        _hold_run(_Hold((("us-east-1a", 1),)), _trace(30, 1.0), settings)
