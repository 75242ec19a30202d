"""The lower bound (mark/apps/simulator/lower_bound.py): hand-computed cases, spot against
on-demand, and the property it exists for: no policy that meets the SLO in the simulator pays
less than it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mark.apps.simulator.engine import SimSettings, run_policy
from mark.apps.simulator.lower_bound import lower_bound, scenario_bound, slo_throughput_rps
from mark.apps.simulator.policies import StaticPolicy
from mark.apps.simulator.runner import POLICY_NAMES, Scenario, simulate
from mark.apps.simulator.workload import Arrivals
from mark.core.catalog import load_catalog
from mark.core.types import Model, Profile, Slo
from provisioner.policy.capacity import slo_capacity
from traces import Trace, write_trace

CATALOG = load_catalog()
INCEPTION = CATALOG.model("inception-v3")
# Two CPU types keep the simulated fleets at a few instances and the runs short.
TYPES = ("c5.large", "c5.xlarge")
# Policies that buy on-demand only in every market (runner's docstring); the rest may buy spot.
ON_DEMAND_ONLY = {"mark-ondemand", "reactive", "queue", "static"}


def _model(a_ms: float, c_ms: float, max_batch: int, slo: Slo) -> Model:
    profile = Profile(
        instance_type="c5.large",
        latency_ms={1: a_ms + c_ms, max_batch: a_ms + c_ms * max_batch},
        max_batch=max_batch,
    )
    return Model(name="m", slo=slo, profiles={"c5.large": profile}, max_batch=max_batch)


def test_throughput_is_the_largest_batch_that_fits_the_latency() -> None:
    # T(b) = 100 + 50 b: b = 4 takes 300 ms, the whole SLO; b = 5 would take 350.
    model = _model(100.0, 50.0, 8, Slo(latency_ms=300.0, percentile=0.98))
    profile = model.profiles["c5.large"]
    assert slo_throughput_rps(profile, model.slo, model.max_batch) == pytest.approx(4 / 0.3)
    assert slo_throughput_rps(profile, model.slo, 2) == pytest.approx(2 / 0.2)
    assert slo_throughput_rps(profile, Slo(latency_ms=120.0, percentile=0.98), 8) == 0.0


def test_constant_rate_needing_two_instances_costs_two_instances() -> None:
    # Unbatched, 1 s per request: one instance serves at most 1 req/s within the SLO, so
    # 1.5 req/s for 10 minutes needs two, all the time; 900 requests at 99.9% leave no miss.
    model = _model(1000.0, 0.0, 1, Slo(latency_ms=2000.0, percentile=0.999))
    price = CATALOG.instance_type("c5.large").on_demand_price_per_hour
    buckets = 10
    bound = lower_bound(
        model,
        np.full(buckets, 1.5 * 60.0),
        90 * buckets,
        0.0,
        60.0,
        CATALOG,
        spot=False,
        zones=("us-east-1a",),
        types=("c5.large",),
        serverless_usd_per_request=None,
    )
    assert bound.miss_allowance == 0 and bound.mixture_allowance_usd == 0.0
    assert bound.method == "milp"
    assert bound.usd == pytest.approx(2 * price * buckets * 60.0 / 3600.0, rel=1e-3)
    # Fractional instances: 1.5 of them.
    assert bound.lp_usd == pytest.approx(1.5 * price * buckets * 60.0 / 3600.0, rel=1e-6)


def test_misses_and_serverless_lower_the_bound() -> None:
    model = _model(100.0, 0.0, 1, Slo(latency_ms=500.0, percentile=0.9))
    price = CATALOG.instance_type("c5.large").on_demand_price_per_hour
    kwargs = {
        "spot": False,
        "zones": ("us-east-1a",),
        "types": ("c5.large",),
    }
    covered = np.full(10, 15.0 * 60.0)
    strict = lower_bound(
        model, covered, 9000, 0.0, 60.0, CATALOG, serverless_usd_per_request=None, **kwargs
    )
    # 10% may miss: the LP serves 90% at 10 req/s per instance.
    assert strict.miss_allowance == 900
    assert strict.lp_usd == pytest.approx(0.9 * 1.5 * price * 600.0 / 3600.0, rel=1e-6)
    # Serverless cheaper per request than an instance-second's share: all of it goes there.
    cheap = price / 3600.0 / 10.0 / 2.0
    spilled = lower_bound(
        model, covered, 9000, 0.0, 60.0, CATALOG, serverless_usd_per_request=cheap, **kwargs
    )
    assert spilled.usd == pytest.approx(0.9 * 9000 * cheap, rel=1e-3)
    assert spilled.serverless_share == pytest.approx(0.9, rel=1e-3)


def test_a_fleet_run_near_saturation_meets_the_slo_and_pays_at_least_the_bound() -> None:
    """Why the bound's capacity is the throughput ceiling, not the planner's capacity at the SLO
    (which keeps a margin): one inf1.xlarge meets the SLO at 180 req/s, near its ceiling, and
    the bound is below what this one-instance fleet pays."""
    model = INCEPTION.to_model()
    profile = model.profiles["inf1.xlarge"]
    rate = 180.0
    ceiling_rps = slo_throughput_rps(profile, model.slo, model.max_batch)
    assert slo_capacity(profile, model.slo, model.max_batch).rate_rps < ceiling_rps
    assert rate < ceiling_rps < 1.15 * rate
    trace = Trace(60.0 * np.arange(10, dtype=np.float64), np.full(10, rate * 60.0), 60.0)
    scenario = Scenario(
        model=model,
        trace=trace,
        catalog=CATALOG,
        settings=SimSettings(types=("inf1.xlarge",)),
        serverless_latency_ms=INCEPTION.serverless_latency_ms,
        serverless_memory_mb=INCEPTION.serverless_memory_mb,
    )
    ceiling = slo_throughput_rps(profile, model.slo, model.max_batch)
    policy = StaticPolicy("inf1.xlarge", capacity_rps=ceiling, peak_rps=rate)
    run = run_policy(
        policy,
        model,
        Arrivals(trace, 0),
        CATALOG,
        scenario.settings,
        serverless_latency_ms=scenario.serverless_latency_ms,
        serverless_memory_mb=scenario.serverless_memory_mb,
    )
    assert run.instance_hours == {"inf1.xlarge": pytest.approx(600.0 / 3600.0)}
    assert float(np.mean(run.latencies_ms <= model.slo.latency_ms)) >= model.slo.percentile
    bound = scenario_bound(scenario, spot=False)
    assert bound.usd <= run.cost_usd


def _scenario(needs: list[float], seed: int, market: str = "mixed") -> Scenario:
    model = INCEPTION.to_model()
    per_instance = slo_capacity(model.profiles["c5.large"], model.slo, model.max_batch).rate_rps
    counts = np.round(np.asarray(needs) * per_instance * 60.0)
    trace = Trace(60.0 * np.arange(len(needs), dtype=np.float64), counts, 60.0)
    return Scenario(
        model=model,
        trace=trace,
        catalog=CATALOG,
        market=market,  # type: ignore[arg-type]
        settings=SimSettings(types=TYPES, seed=seed),
        serverless_latency_ms=INCEPTION.serverless_latency_ms,
        serverless_memory_mb=INCEPTION.serverless_memory_mb,
        oracle_time_limit_s=10.0,
    )


def test_spot_bound_is_at_most_the_on_demand_bound() -> None:
    scenario = _scenario([1.0, 2.5, 4.0, 5.0, 3.0, 1.5, 2.0, 4.5, 3.5, 1.0], seed=3)
    on_demand = scenario_bound(scenario, spot=False)
    spot = scenario_bound(scenario, spot=True)
    assert 0 < spot.usd <= on_demand.usd
    assert all(market.value == "on-demand" for _, market in on_demand.candidates)
    assert any(market.value == "spot" for _, market in spot.candidates)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    needs=st.lists(st.floats(1.0, 5.0), min_size=10, max_size=30),
    seed=st.integers(0, 2**16),
)
def test_no_policy_that_meets_the_slo_pays_less_than_the_bound(
    needs: list[float], seed: int
) -> None:
    """Rates needing 1-5 c5.large at the planner's capacity. Policies that miss the SLO are
    left out: the bound is the cheapest way to meet it, and missing it can be had for nothing
    (no instances at all)."""
    scenario = _scenario(needs, seed)
    runs = simulate(scenario, POLICY_NAMES)
    spot = scenario_bound(scenario, spot=True)
    on_demand = scenario_bound(scenario, spot=False)
    percentile = scenario.model.slo.percentile
    met = [r for r in runs if float(np.mean(r.latencies_ms <= 600.0)) >= percentile]
    assert any(r.name == "static" for r in met)  # sized for the peak: the comparison happens
    for run in met:
        assert run.cost_usd >= spot.usd, (run.name, run.cost_usd, spot)
        if run.name in ON_DEMAND_ONLY:
            assert run.cost_usd >= on_demand.usd, (run.name, run.cost_usd, on_demand)


def test_simulate_writes_the_bound_under_meta(tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    write_trace(trace, Trace(60.0 * np.arange(10, dtype=np.float64), np.full(10, 300.0), 60.0))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "mark.apps.cli", "simulate", "--trace", str(trace)]
    command += ["--model", "inception-v3", "--policies", "static", "--market", "ondemand"]
    done = subprocess.run(
        [*command, "--types", ",".join(TYPES), "--out", str(out)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    data = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    bounds = data["meta"]["lower_bound"]
    assert set(bounds) == {"ondemand"}  # no spot bound for an on-demand run
    static = data["policies"]["static"]
    assert {"cost_usd", "slo_attainment", "instance_hours"} <= set(static)
    assert 0 < bounds["ondemand"]["usd"] <= static["cost_usd"]
    assert bounds["ondemand"]["method"] in ("milp", "lp")
    assert "/ bound ondemand" in done.stdout
