"""The many-model simulator (mark.apps.simulator.many_model) and `mark simulate --fleet`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mark.apps.cli import main
from mark.apps.simulator import many_model as mm
from mark.apps.simulator.engine import SimSettings, run_policy
from mark.apps.simulator.fleet_file import FleetModel, read_fleet, write_fleet
from mark.apps.simulator.policies import StaticPolicy
from mark.apps.simulator.report import policy_summary
from mark.apps.simulator.workload import Arrivals
from mark.core.catalog import load_catalog
from mark.core.errors import InvalidValue
from mark.core.types import Slo
from provisioner.policy.capacity import CapacityCache
from traces import Trace, write_trace
from traces.generators import diurnal, zipf_models

CATALOG = load_catalog()
BERT_SLO = Slo(latency_ms=100, percentile=0.9)
MANY_KEYS = {
    "cost_per_hour_usd": float,
    "models": int,
    "models_meeting_slo": int,
    "cache_hit_rate": float,
    "loads": int,
    "slo_attainment_by_decile": list,
    "cost_usd": float,
    "slo_attainment": float,
    "requests": int,
    "spilled": int,
}


def bert_fleet(n: int) -> tuple[FleetModel, ...]:
    return tuple(
        FleetModel(f"model-{i:04d}", 800.0, BERT_SLO, "bert-base") for i in range(1, n + 1)
    )


def test_cli_writes_the_many_model_contract(tmp_path: Path) -> None:
    trace = zipf_models(n_models=20, hours=2.0, total_peak_rps=60.0, seed=3)
    write_trace(tmp_path / "t.csv", trace)
    write_fleet(tmp_path / "fleet.json", list(bert_fleet(20)))
    code = main(
        [
            "simulate",
            "--trace",
            str(tmp_path / "t.csv"),
            "--fleet",
            str(tmp_path / "fleet.json"),
            "--policies",
            "mark,static",
            "--market",
            "ondemand",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0
    data = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(data["policies"]) == {"mark-ondemand", "static"}
    for entry in data["policies"].values():
        for key, kind in MANY_KEYS.items():
            assert isinstance(entry[key], kind), (key, entry[key])
        deciles = entry["slo_attainment_by_decile"]
        assert len(deciles) == 10 and all(isinstance(d, float) and 0 <= d <= 1 for d in deciles)
        assert entry["requests"] == int(trace.counts.sum())
        assert 0 <= entry["models_meeting_slo"] <= entry["models"] <= 20
        assert 0 <= entry["cache_hit_rate"] <= 1


def test_fleet_file_errors_name_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    path.write_text(json.dumps({"models": [{"name": "a", "size_mb": 1, "slo_ms": 100}]}))
    with pytest.raises(InvalidValue, match=r"models\[0\]: missing percentile, profile"):
        read_fleet(path, CATALOG)
    row = {"name": "a", "size_mb": 1, "slo_ms": 100, "percentile": 0.9, "profile": "nope"}
    path.write_text(json.dumps({"models": [row]}))
    with pytest.raises(Exception, match="nope"):
        read_fleet(path, CATALOG)
    path.write_text(json.dumps({"models": [dict(row, profile="bert-base")] * 2}))
    with pytest.raises(InvalidValue, match="appears twice"):
        read_fleet(path, CATALOG)


def test_trace_models_missing_from_the_fleet_are_an_error() -> None:
    trace = zipf_models(n_models=3, hours=0.5)
    scenario = mm.ManyScenario(bert_fleet(2), trace, CATALOG)
    with pytest.raises(InvalidValue, match="model-0003"):
        mm.simulate_many(scenario, ["static"])


def test_zipf_day_mark_caches_well_and_static_costs_more() -> None:
    """Zipf(1.1) over 50 bert-base models through a diurnal day (4x peak to valley): Mark
    follows the day with few loads and keeps nearly every request a cache hit; static, placed
    for every model's peak, pays for the peak all day."""
    trace = zipf_models(n_models=50, hours=24.0, total_peak_rps=150.0, start_s=0.0, seed=1)
    fleet = bert_fleet(50)
    runs = mm.simulate_many(mm.ManyScenario(fleet, trace, CATALOG), ["mark", "static"])
    mark, static = (r.summary(fleet) for r in runs)
    assert mark["cache_hit_rate"] >= 0.99
    assert mark["slo_attainment"] >= BERT_SLO.percentile
    assert mark["models_meeting_slo"] == mark["models"] == 50
    assert static["cost_usd"] > mark["cost_usd"]
    assert static["loads"] == 0  # warm start, never changed
    assert mark["slo_attainment_by_decile"][0] >= 0.99


def test_drift_moves_stay_within_the_bound() -> None:
    """Popularity drifting over the day makes Mark move models, never more than the planner's
    bound per tick."""
    trace = zipf_models(
        n_models=60, hours=8.0, total_peak_rps=400.0, drift=1.5, drift_corr_s=3600.0, seed=2
    )
    fleet = bert_fleet(60)
    settings = mm.ManySettings(max_moves=4, types=("inf1.xlarge",))
    run = mm.simulate_many(mm.ManyScenario(fleet, trace, CATALOG, settings=settings), ["mark"])[0]
    entry = run.summary(fleet)
    assert 0 < entry["moves_per_tick_max"] <= 4
    assert max(run.moves) <= 4
    assert entry["slo_attainment"] >= BERT_SLO.percentile


def test_drift_default_keeps_existing_traces() -> None:
    a = zipf_models(n_models=4, hours=1.0, seed=5)
    b = zipf_models(n_models=4, hours=1.0, seed=5, drift=0.0)
    assert np.array_equal(a.counts, b.counts)
    c = zipf_models(n_models=4, hours=1.0, seed=5, drift=1.0)
    assert not np.array_equal(a.counts, c.counts)
    assert c.source.endswith("drift=1.0)")


# --- the bucket engine against the per-request engine ----------------------------------------

MODEL = "bert-base"
TYPE = "c5.xlarge"  # T(b) = 108 ms..384 ms, capacity ~5 req/s: few requests, quick per-request


def _cross_check(peak_factor: float) -> tuple[dict[str, float], float, float]:
    """One model, one type, a static fleet sized for `peak_factor` x the trace's peak: the
    per-request engine's summary, and the bucket engine's cost and SLO attainment with the same
    fleet on the same counts."""
    entry = CATALOG.model(MODEL)
    model = entry.to_model()
    trace = diurnal(days=0.1, peak_rps=30.0, start_s=17 * 3600.0)
    cache = CapacityCache(budget_fraction=0.8)
    profile = model.profiles[TYPE]
    cap = cache.get(profile, model.slo, profile.max_batch).rate_rps
    peak = float(trace.rates_rps.max())
    policy = StaticPolicy(TYPE, cap, peak * peak_factor)
    per_request = policy_summary(
        run_policy(
            policy,
            model,
            Arrivals(trace, 0),
            CATALOG,
            SimSettings(types=(TYPE,)),
            serverless_latency_ms=entry.serverless_latency_ms,
            serverless_memory_mb=entry.serverless_memory_mb,
        ),
        model.slo,
    )
    many = Trace(trace.timestamps_s, trace.counts, trace.bucket_s, ("m",) * trace.counts.size)
    fleet = (FleetModel("m", 800.0, model.slo, MODEL),)
    if peak_factor >= 1.0:
        # The many-model static itself: placement at the peak gives the same count.
        scenario = mm.ManyScenario(fleet, many, CATALOG, settings=mm.ManySettings(types=(TYPE,)))
        run = mm.simulate_many(scenario, ["static"])[0]
        summary = run.summary(fleet)
        return per_request, summary["cost_usd"], summary["slo_attainment"]
    settings = mm.ManySettings(types=(TYPE,))
    models = mm._Models(fleet, CATALOG, TYPE, cache, settings, None)
    instances = mm._Fleet(models, CATALOG.instance_type(TYPE), settings)
    start = float(trace.grid_s[0])
    for _ in range(max(1, int(np.ceil(peak * peak_factor / cap - 1e-9)))):
        row = instances.launch(start, warm=True)
        instances.load(row, 0, start, warm=True)
        instances.placed[row, 0] = True
    serving = mm._Serving(instances, np.array([False]), np.array([0.0]))
    for k in range(trace.counts.size):
        serving.bucket(trace.counts[k : k + 1], start + k * trace.bucket_s, trace.bucket_s)
    cost = instances.charge_usd(start + trace.duration_s, None)
    return per_request, cost, float(serving.good.sum() / serving.requests.sum())


def test_bucket_engine_matches_the_per_request_engine_within_capacity() -> None:
    """Sized for the peak, every instance stays within occupancy 1, where the capacity behind
    occupancy is the rate at which the M/D/c model meets the SLO percentile: both engines bill
    the same instances for the same time (equal cost), and the per-request attainment may fall
    short of the bucket engine's 1.0 only by what the percentile allows (1 - 0.98)."""
    per_request, cost, attained = _cross_check(1.0)
    assert cost == pytest.approx(per_request["cost_usd"], rel=1e-9)
    assert attained == pytest.approx(1.0)
    assert per_request["slo_attainment"] >= attained - (1 - CATALOG.model(MODEL).slo.percentile)


def test_bucket_engine_is_conservative_when_overloaded() -> None:
    """Sized for half the peak, instances go beyond occupancy 1 for part of the run. The bucket
    engine counts the excess share as missed; the per-request data plane does better (its
    backlog batches serve beyond the capacity the M/D/c search certifies, ~7.5 against 5 req/s
    here), so the bucket engine's attainment is a lower bound: below the per-request one, and
    below 1 (measured: 0.928 against 0.9997)."""
    per_request, cost, attained = _cross_check(0.5)
    assert cost == pytest.approx(per_request["cost_usd"], rel=1e-9)
    assert attained < 0.99
    assert attained <= per_request["slo_attainment"]


@pytest.mark.parametrize(
    ("model", "itype", "per_instance"),
    [
        ("bert-base", "inf1.6xlarge", 76),  # AWS: 3,040 models on 40 instances
        ("bert-base", "g4dn.12xlarge", 29),  # AWS: (3,048 - 32 x 76) / 21
        ("translation-300mb", "g4dn.xlarge", 5),  # Cortex: "5 models safely"
    ],
)
def test_catalog_footprints_give_the_seeds_models_per_instance(
    model: str, itype: str, per_instance: int
) -> None:
    profile = CATALOG.model(model).profiles[itype]
    capacity = CATALOG.instance_type(itype).model_capacity_mb
    assert int(capacity // profile.memory_mb) == per_instance
    assert profile.estimated and "derived" in profile.source or "Cortex" in profile.source


def test_mixed_market_runs_mark_on_both_and_spot_costs_less() -> None:
    trace = zipf_models(n_models=20, hours=1.0, total_peak_rps=100.0, seed=4)
    fleet = bert_fleet(20)
    scenario = mm.ManyScenario(fleet, trace, CATALOG, "mixed")
    runs = {r.name: r for r in mm.simulate_many(scenario, ["mark"])}
    assert set(runs) == {"mark-ondemand", "mark-spot"}
    assert 0 < runs["mark-spot"].cost_usd < runs["mark-ondemand"].cost_usd
