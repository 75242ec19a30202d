"""The baselines as their users run them and Mark's ablations (issue 15, item 5): each switch is
a config setting the live system reads, and each one changes what the simulated policy does.
Real simulator runs on traces of tens of minutes, and the live control loop's side of the
switches on the local cloud."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mark.adapters.db import Database
from mark.apps.control.loop import ControlLoop, Schedule
from mark.apps.simulator.engine import PolicyRun, SimSettings
from mark.apps.simulator.policies import MarkPolicy, QueuePolicy, ReactivePolicy
from mark.apps.simulator.policies.base import batched_capacity_rps, unbatched_capacity_rps
from mark.apps.simulator.report import policy_summary
from mark.apps.simulator.runner import ABLATIONS, Scenario, build_policies, simulate
from mark.core.catalog import load_catalog
from mark.core.config import Config, PlannerConfig, ServerlessConfig
from mark.core.types import Forecast
from predictors import create_forecaster
from provisioner.adapters.local_cloud import LocalCloud
from provisioner.adapters.serverless import LocalFunctionPool
from provisioner.policy.capacity import CapacityCache
from provisioner.policy.planner import Launch, plan
from provisioner.policy.snapshot import build_snapshot
from traces import Trace

CATALOG = load_catalog()
ENTRY = CATALOG.model("inception-v3")
MODEL = ENTRY.to_model()
CACHE = CapacityCache(budget_fraction=SimSettings().batching.slo_budget_fraction)


def _scenario(
    rates_rps: list[float], *, types: tuple[str, ...] = (), market: str = "ondemand"
) -> Scenario:
    n = len(rates_rps)
    trace = Trace(np.arange(n) * 60.0, np.rint(np.asarray(rates_rps) * 60.0), 60.0)
    return Scenario(
        model=MODEL,
        trace=trace,
        catalog=CATALOG,
        market=market,  # type: ignore[arg-type]
        settings=SimSettings(seed=3, types=types, interruption_rate_per_hour=0.0),
        serverless_latency_ms=ENTRY.serverless_latency_ms,
        serverless_memory_mb=ENTRY.serverless_memory_mb,
    )


def _runs(scenario: Scenario, names: list[str]) -> dict[str, PolicyRun]:
    return {r.name: r for r in simulate(scenario, names)}


def _shortfall(run: PolicyRun) -> float:
    """Requests per second of demand above the running capacity, summed over the windows."""
    demand, capacity = run.series["demand_rps"], run.series["capacity_rps"]
    return float(np.maximum(demand - capacity, 0.0).sum())


def test_ablations_are_the_live_config_switches() -> None:
    policies = build_policies(_scenario([10.0] * 5, market="spot"), ["mark", *ABLATIONS])
    by_name = {p.name: p for p in policies}
    assert all(isinstance(p, MarkPolicy) for p in policies)
    full, blind = by_name["mark-spot"], by_name["mark-noforecast"]
    nobatch, nospill, nospot = (by_name[n] for n in ("mark-nobatch", "mark-nospill", "mark-nospot"))
    assert isinstance(full, MarkPolicy) and isinstance(blind, MarkPolicy)
    assert isinstance(nobatch, MarkPolicy) and isinstance(nospill, MarkPolicy)
    assert isinstance(nospot, MarkPolicy)
    assert (full.batching, full.spill, full.planner.spot, full.forecast.upper_band) == (
        True,
        True,
        True,
        True,
    )
    assert blind.forecast.predictor == "last" and not blind.forecast.upper_band
    assert not nobatch.batching and nobatch.spill and nobatch.planner.spot
    assert not nospill.spill and nospill.batching and nospill.planner.spot
    assert not nospot.planner.spot and nospot.batching and nospot.spill


def test_forecast_without_band_is_its_mean() -> None:
    forecaster = create_forecaster("last", bucket_s=60.0)
    for k, count in enumerate([600.0, 900.0, 1200.0, 660.0, 1500.0]):
        forecaster.observe(k * 60.0, count)
    banded = forecaster.forecast(3, 0.95)
    bare = forecaster.forecast(3, 0.95, band=False)
    assert bare.mean_rps == bare.upper_rps == banded.mean_rps == (25.0, 25.0, 25.0)
    assert min(banded.upper_rps) > 25.0


def test_snapshot_without_batching_buys_unbatched_capacity() -> None:
    """The planner, given a snapshot built with batching off (`BatchingConfig.enabled`), buys
    instances for the capacity of unbatched service, and with it on for the batched one."""
    rate = 300.0
    itype = "inf1.xlarge"
    forecast = Forecast(start_s=0.0, bucket_s=60.0, mean_rps=(rate,) * 5, upper_rps=(rate,) * 5)
    offerings = CATALOG.offerings(("us-east-1a",), at_s=0.0, spot=False, types=(itype,))
    launched: dict[bool, int] = {}
    for batching in (True, False):
        snapshot = build_snapshot(
            0.0,
            [MODEL],
            {MODEL.name: forecast},
            instances=(),
            offerings=offerings,
            instance_types=CATALOG.instance_types,
            tick_s=60.0,
            batching=batching,
        )
        result = plan(snapshot, PlannerConfig(spot=False, tail_after_lead=False), CACHE)
        launched[batching] = sum(isinstance(a, Launch) for a in result.actions)
    assert launched[True] == np.ceil(rate / batched_capacity_rps(MODEL, itype, CACHE))
    assert launched[False] == np.ceil(rate / unbatched_capacity_rps(MODEL, itype, CACHE))
    assert launched[False] > 2 * launched[True]


def test_nobatch_runs_unbatched_capacity_and_buys_more() -> None:
    scenario = _scenario([150.0] * 30, types=("inf1.xlarge",))
    runs = _runs(scenario, ["mark", "mark-nobatch"])
    full, nobatch = runs["mark-ondemand"], runs["mark-nobatch"]
    count = nobatch.type_series["inf1.xlarge"][-1]
    per_instance = nobatch.series["capacity_rps"][-1] / count
    assert per_instance == pytest.approx(unbatched_capacity_rps(MODEL, "inf1.xlarge", CACHE))
    full_per_instance = full.series["capacity_rps"][-1] / full.type_series["inf1.xlarge"][-1]
    assert full_per_instance == pytest.approx(batched_capacity_rps(MODEL, "inf1.xlarge", CACHE))
    assert nobatch.instance_hours["inf1.xlarge"] > 2 * full.instance_hours["inf1.xlarge"]
    assert policy_summary(nobatch, MODEL.slo)["slo_attainment"] >= MODEL.slo.percentile


def test_nospill_spills_nothing_where_mark_spills() -> None:
    """A surge of 4x that only inf1.xlarge (minutes to start) may serve: Mark spills the gap
    until the instances are ready; without spill nothing goes to the pool and the SLO fails."""
    scenario = _scenario([60.0] * 20 + [240.0] * 10 + [60.0] * 10, types=("inf1.xlarge",))
    runs = _runs(scenario, ["mark", "mark-nospill"])
    full = policy_summary(runs["mark-ondemand"], MODEL.slo)
    nospill = policy_summary(runs["mark-nospill"], MODEL.slo)
    assert full["spilled"] > 1000 and nospill["spilled"] == 0
    assert runs["mark-nospill"].serverless_cost_usd == 0.0
    assert full["slo_attainment"] >= MODEL.slo.percentile > nospill["slo_attainment"]


def test_noforecast_falls_behind_a_rising_trace() -> None:
    """On a steady ramp the forecaster's trend and band buy ahead of demand; planning for the
    last observed rate buys later, so more of the demand runs above the capacity."""
    scenario = _scenario(list(np.linspace(40.0, 1200.0, 30)) + [1200.0] * 5)
    runs = _runs(scenario, ["mark", "mark-noforecast"])
    assert _shortfall(runs["mark-noforecast"]) > 1.05 * _shortfall(runs["mark-ondemand"])
    assert runs["mark-noforecast"].cost_usd < runs["mark-ondemand"].cost_usd


def test_nospot_is_mark_ondemand() -> None:
    scenario = _scenario([40.0 + 10.0 * np.sin(k / 3.0) for k in range(20)], market="mixed")
    runs = _runs(scenario, ["mark", "mark-nospot"])
    od, nospot = runs["mark-ondemand"], runs["mark-nospot"]
    assert nospot.cost_usd == pytest.approx(od.cost_usd)
    assert nospot.instance_hours == od.instance_hours
    assert runs["mark-spot"].cost_usd < od.cost_usd


def test_reactive_runs_batched_on_the_users_type_and_reactive_cpu_on_c5() -> None:
    scenario = _scenario([150.0] * 30)
    reactive, cpu = build_policies(scenario, ["reactive", "reactive-cpu"])
    assert isinstance(reactive, ReactivePolicy) and isinstance(cpu, ReactivePolicy)
    assert cpu.instance_type.startswith("c5.") and not cpu.batching
    assert cpu.capacity_rps == unbatched_capacity_rps(MODEL, cpu.instance_type, CACHE)
    assert cpu.sagemaker_price_per_hour == CATALOG.sagemaker_price_per_hour[cpu.instance_type]
    assert reactive.batching
    batched = batched_capacity_rps(MODEL, reactive.instance_type, CACHE)
    assert reactive.capacity_rps == batched
    # Its target per instance is more than one unbatched instance serves at the SLO, so only a
    # data plane that batches for it meets the SLO with the instances it buys.
    unbatched = unbatched_capacity_rps(MODEL, reactive.instance_type, CACHE)
    assert reactive.target_per_minute / 60.0 > unbatched
    runs = _runs(scenario, ["reactive", "reactive-cpu"])
    rows = {n: policy_summary(r, MODEL.slo) for n, r in runs.items()}
    assert rows["reactive"]["slo_attainment"] >= MODEL.slo.percentile
    assert sum(runs["reactive"].instance_hours.values()) == pytest.approx(
        np.ceil(150.0 / (reactive.target_per_minute / 60.0)) * 0.5, abs=0.05
    )
    assert set(runs["reactive-cpu"].instance_hours) == {cpu.instance_type}
    assert rows["reactive"]["cost_usd"] < rows["reactive-cpu"]["cost_usd"]


def test_queue_batch_is_ray_serve_with_serve_batch() -> None:
    scenario = _scenario([150.0] * 30)
    queue, batched = build_policies(scenario, ["queue", "queue-batch"])
    assert isinstance(queue, QueuePolicy) and isinstance(batched, QueuePolicy)
    assert batched.batching and not queue.batching
    assert batched.target_ongoing_requests == queue.target_ongoing_requests == 2.0
    cap = batched_capacity_rps(MODEL, batched.instance_type, CACHE)
    assert batched.max_replicas == max(1, 2 * int(np.ceil(150.0 / cap - 1e-9)))
    runs = _runs(scenario, ["queue", "queue-batch"])
    rows = {n: policy_summary(r, MODEL.slo) for n, r in runs.items()}
    assert rows["queue-batch"]["slo_attainment"] >= MODEL.slo.percentile
    assert rows["queue-batch"]["cost_usd"] < rows["queue"]["cost_usd"]


# -- the same switches in the live control loop -------------------------------------------------


def _live_config(**sections: dict[str, Any]) -> Config:
    return Config.model_validate(
        {
            "cloud": {"zones": ["us-east-1a"], "launch_overhead_scale": 0.001},
            # A budget nothing fits in: the loop plans and buys nothing.
            "planner": {"budget_per_hour": 1e-6, "spot": False},
            **sections,
        }
    )


async def test_live_loop_without_spill_keeps_nothing_warm(tmp_path: Path) -> None:
    """With `spill.enabled` off the loop plans no warm functions, although the pool is there
    and nothing serves the forecast (with spill on the same tick warms 3: see
    test_control_loop_local)."""
    model = CATALOG.model("demo").to_model()
    db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'loop.db'}")
    await db.create_model(model)
    config = _live_config(forecast={"predictor": "last"}, spill={"enabled": False})
    start = time.time()
    times = np.arange(start - 60.0, start + 3600.0, 60.0)
    known = Schedule(Trace(times, np.full(times.size, 240.0), 60.0))
    cloud = LocalCloud(config.cloud, models=db.get_model, state_dir=tmp_path / "cloud")
    pool = LocalFunctionPool(ServerlessConfig(concurrency=4, timeout_s=60))
    loop = ControlLoop(
        db, cloud, config, counts=dict, schedule=known, clock=lambda: start, serverless=pool
    )
    try:
        result = await loop.tick()
        assert result is not None and result.warm_functions == {}
        assert pool.profile(model.name, default_warm_ms=999.0).idle_warm == 0
    finally:
        await pool.close()
        await cloud.close()
        await db.close()


@pytest.mark.parametrize("band", [True, False])
async def test_live_loop_forecast_band_switch(tmp_path: Path, band: bool) -> None:
    model = CATALOG.model("demo").to_model()
    db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'loop.db'}")
    await db.create_model(model)
    config = _live_config(forecast={"predictor": "last", "upper_band": band})
    now = {"s": time.time()}
    total = {model.name: 0.0}
    cloud = LocalCloud(config.cloud, models=db.get_model, state_dir=tmp_path / "cloud")
    loop = ControlLoop(db, cloud, config, counts=lambda: dict(total), clock=lambda: now["s"])
    try:
        for count in (0.0, 600.0, 1200.0):
            total[model.name] += count
            await loop.tick()
            now["s"] += 60.0
        forecast = loop._forecast(model, now["s"], loop._serverless_terms())
        assert forecast.mean_rps[0] == pytest.approx(20.0)
        if band:
            assert forecast.upper_rps[0] > forecast.mean_rps[0]
        else:
            assert forecast.upper_rps == forecast.mean_rps
    finally:
        await cloud.close()
        await db.close()
