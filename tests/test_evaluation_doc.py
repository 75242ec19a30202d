"""docs/evaluation.md says only what its run measured: `bench.evaluation.render_page` is a
function of the results, so every figure and every holds / does-not-hold on the page must
follow the results it is given (change a figure in, the text changes); the windows a run
replays are scaled and placed as the page says."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bench.evaluation import (
    DAY_S,
    POLICIES,
    SURGE_START_S,
    RunResult,
    Setup,
    claims,
    efficient_type,
    evaluate,
    lower_bound_usd,
    render_page,
    scaled_window,
)
from mark.apps.simulator.engine import SimSettings
from mark.apps.simulator.policies.base import batched_capacity_rps
from mark.core.catalog import load_catalog
from mark.core.config import PlannerConfig
from mark.core.types import Slo
from provisioner.policy.capacity import CapacityCache

SLO = Slo(latency_ms=600.0, percentile=0.98)


def _row(cost_usd: float, attained: float = 1.0, **extra: Any) -> dict[str, Any]:
    return {
        "cost_usd": cost_usd,
        "slo_attainment": attained,
        "requests": 1000,
        "spilled": extra.pop("spilled", 0),
        "p50_ms": 20.0,
        "p99_ms": extra.pop("p99_ms", 55.0),
        "instance_hours": extra.pop("instance_hours", {}),
        "failed": 0,
        "slo_met": attained >= SLO.percentile,
        "launches": extra.pop("launches", 30),
        "interrupted": extra.pop("interrupted", 0),
        "max_launches_per_tick": extra.pop("max_launches_per_tick", 24),
        "instances_by_market": extra.pop("fleet", {}),
        **extra,
    }


def _rows(**costs: float) -> dict[str, dict[str, Any]]:
    base = {
        "mark-ondemand": _row(
            11.0, fleet={"inf1.xlarge": {"on-demand": {"peak": 26, "mean": 17.25}}}
        ),
        "mark-spot": _row(
            4.5,
            instance_hours={"inf1.xlarge": 70.0},
            interrupted=2,
            fleet={
                "inf1.xlarge": {
                    "on-demand": {"peak": 6, "mean": 3.5},
                    "spot": {"peak": 22, "mean": 14.0},
                }
            },
        ),
        "reactive": _row(40.0),
        "queue": _row(20.0, 0.9479, p99_ms=23348.0),
        "skyserve": _row(6.0, spilled=1234),
        "static": _row(16.0),
        "oracle": _row(3.2, bound_usd=3.0),
        "oracle-ondemand": _row(10.2, bound_usd=10.0),
    }
    for name, cost in costs.items():
        base[name.replace("_", "-")]["cost_usd"] = cost
    return base


def _result(kind: str = "diurnal", **changes: Any) -> RunResult:
    result = RunResult(
        model="inception-v3",
        kind=kind,
        trace={"diurnal": "twitter-like-diurnal-2d", "mmpp": "mmpp-4h"}.get(kind, "surge-100"),
        window_s=(DAY_S + 15 * 3600.0, DAY_S + 19 * 3600.0),
        slo=SLO,
        requests=24_404_290,
        efficient_type="inf1.xlarge",
        efficient_rps=97.6,
        peak_rps=2342.4,
        held_out="day 1 of twitter-like-diurnal-2d (24 h)",
        backtest=(("arima", 0.64), ("last", 0.66), ("learned", 0.7)),
        rows=_rows(),
        reactive_type="g4dn.xlarge",
        reactive_overprovision=2.0,
        queue_max_replicas=142,
        spot_discount_pct={"inf1.xlarge": 63.4},
        wall_s=212.0,
        cpu_s=150.0,
    )
    return replace(result, **changes)


def _setup(**changes: Any) -> Setup:
    setup = Setup(
        command=".venv/bin/python bench/evaluation.py --hours 4",
        instances=24.0,
        hours=4.0,
        max_requests=60_000_000,
        settings=SimSettings(interruption_rate_per_hour=0.02),
        planner=PlannerConfig(),
        models=("inception-v3",),
        kinds=("diurnal",),
        workers=2,
        runtime_s=587.0,
    )
    return replace(setup, **changes)


def _page(results: list[RunResult] | None = None, **setup: Any) -> str:
    return render_page(_setup(**setup), results or [_result()])


def test_the_figures_on_the_page_are_those_of_the_results() -> None:
    page = _page()
    # The run's table: cost against both bounds, SLO, latency, spills, interruptions,
    # launches and the fleet by type and market.
    assert (
        "| mark-spot | 4.50 | 0.45x | 1.50x | 100.00% | 20 | 55 | 0 | 2 | 30 | "
        "inf1.xlarge on-demand 6/3.5, inf1.xlarge spot 22/14.0 |"
    ) in page
    assert (
        "| queue | 20.00 | 2.00x | 6.67x | 94.79% (misses SLO) | 20 | 23348 | 0 | 0 | 30 | - |"
        in page
    )
    assert "| skyserve | 6.00 | 0.60x | 2.00x | 100.00% | 20 | 55 | 1,234 |" in page
    # The headline beside the paper's Table 5 and SkyServe's saving.
    assert (
        "| inception-v3 | diurnal | 1.10x | 1.50x | 59% | 3.64x (3.63x) | 8.89x (6.21x) | "
        "1.33x (100.00%) |" in page
    )
    # The claims, each with its figures.
    assert "- holds: MArk-ondemand at most 1.15x the on-demand lower bound (1.10x: $11.00" in page
    assert "- holds: MArk-ondemand at most 0.75x static (0.69x: $11.00 against $16.00)" in page
    assert (
        "- holds: MArk-spot at most 1.6x the all-spot lower bound (1.50x: $4.50 against $3.00)"
        in page
    )
    assert "- **does not hold**: MArk-spot at most 0.45x MArk-ondemand (0.41x)" not in page
    assert "- holds: MArk-spot at most 0.45x MArk-ondemand (0.41x)" in page
    assert (
        "- holds: MArk-spot cheaper than skyserve, which meets the SLO ($4.50 against $6.00)"
        in page
    )
    assert "- holds: MArk-spot launches at most 3x oracle's (30 against 30)" in page
    assert "max_launches_per_tick 40 in one tick (at most 24)" in page
    assert "Claims: 11 of 11 hold." in page
    # Windows, scale and what chose what.
    assert "day 2 15:00-19:00 (4 h) | 24,404,290 | 2,342 | `arima` | day 1 of" in page
    assert "peak 2,342 req/s = 24.0 x `inf1.xlarge` (97.6 req/s each" in page
    assert "inception-v3 `inf1.xlarge` (97.6 req/s)" in page
    assert "(pinball loss 0.64% of the mean rate; runner-up `last` at 0.66%)" in page
    assert "set from the peak need, 142 here" in page
    # The prose: baseline settings, catalog figures, runtime.
    assert "2x over-provisioning" in page
    assert "0.02 per instance-hour with a 2-minute notice" in page
    assert "MArk-spot saved 59% over MArk-ondemand (the catalog's mean spot discounts" in page
    assert "against SkyServe's reported 43% over all on-demand; 2 spot interruptions" in page
    assert "Total runtime: 587 s with 2 worker process(es); the runs took 150 CPU-seconds" in page
    assert "Wall time 212 s (CPU 150 s)." in page
    assert "![instances](evaluation/inception-v3-diurnal-instances.png)" in page


def test_a_changed_input_changes_the_text() -> None:
    before = _page()
    rows = _rows(reactive=22.0)
    rows["oracle-ondemand"]["bound_usd"] = 5.0
    after = _page(
        [_result(rows=rows, backtest=(("ensemble", 0.61), ("arima", 0.7)), wall_s=31.0)],
        settings=SimSettings(interruption_rate_per_hour=0.05, interruption_notice_s=60.0),
        planner=PlannerConfig(max_launches_per_tick=10),
        runtime_s=31.0,
    )
    assert "2.00x (3.63x)" in after and "3.64x (3.63x)" in before
    assert "| mark-ondemand | 11.00 | 2.20x |" in after
    assert "0.05 per instance-hour with a 1-minute notice" in after
    assert "`ensemble`" in after and "runner-up `arima` at 0.70%" in after
    # The cap is read from the planner: 24 launches in a tick now break it.
    assert (
        "- **does not hold**: MArk-spot never launches more than max_launches_per_tick 10" in after
    )
    assert "Total runtime: 31 s" in after


def test_a_claim_that_fails_is_printed_as_measured() -> None:
    rows = _rows(mark_ondemand=13.0, mark_spot=6.5)
    rows["mark-spot"]["slo_attainment"] = 0.97998
    rows["mark-spot"]["launches"] = 91
    rows["skyserve"]["slo_attainment"] = 0.95
    checked = claims(rows, SLO, "diurnal")
    assert [c.holds for c in checked] == [True, False, False, False, False, False, True, False]
    # Off the diurnal trace there is no static target; SkyServe missed the SLO, so none there.
    assert not any("static" in c.text or "skyserve" in c.text for c in claims(rows, SLO, "mmpp"))
    page = _page([_result(rows=rows)])
    assert "- **does not hold**: MArk-spot meets the SLO (97.998% within 600 ms" in page
    assert (
        "- **does not hold**: MArk-ondemand at most 1.15x the on-demand lower bound (1.30x" in page
    )
    assert "- **does not hold**: MArk-spot launches at most 3x oracle's (91 against 30)" in page
    assert "Claims: 4 of 10 hold." in page
    assert "not holding: inception-v3-diurnal 6 of 10." in page
    assert "Mark missed the SLO on: inception-v3-diurnal mark-spot." in page


def test_the_bounds_are_the_oracles_and_other_policies_render_as_rows() -> None:
    rows: dict[str, Any] = _rows()
    assert lower_bound_usd(rows, spot=True) == 3.0
    assert lower_bound_usd(rows, spot=False) == 10.0
    rows["mark-nospill"] = {k: v for k, v in _row(12.5, launches=44).items() if k != "interrupted"}
    page = _page([_result(rows=rows)])
    assert "| mark-nospill | 12.50 | 1.25x | 4.17x | 100.00% | 20 | 55 | 0 | 0 | 44 | - |" in page
    assert "mark" in POLICIES and "oracle" in POLICIES


def test_windows_are_scaled_and_placed_as_the_page_says() -> None:
    catalog = load_catalog()
    model = catalog.model("lstm-ptb").to_model()
    chosen, capacity = efficient_type(model, catalog, CapacityCache())
    price = catalog.instance_type(chosen).on_demand_price_per_hour
    for name in model.profiles:  # no profiled type serves a request cheaper at the SLO
        other = batched_capacity_rps(model, name, CapacityCache())
        if other > 0:
            assert catalog.instance_type(name).on_demand_price_per_hour / other >= price / capacity
    diurnal, _ = scaled_window("diurnal", 4.0, 24.0, capacity, 10**12)
    assert diurnal.rates_rps.max() == pytest.approx(24.0 * capacity, rel=1e-3)
    start, end = diurnal.timestamps_s[0], diurnal.timestamps_s[-1] + diurnal.bucket_s
    assert end - start == 4 * 3600.0 and start >= DAY_S and end % 3600.0 == 0.0
    assert diurnal.rates_rps.argmax() >= diurnal.counts.size - 60  # the peak, in the last hour
    surge, _ = scaled_window("surge", 4.0, 24.0, capacity, 10**12)
    assert surge.timestamps_s[0] == SURGE_START_S - 3600.0
    # A budget of requests shortens the window in 15-minute steps, down to one step.
    short, _ = scaled_window("mmpp", 4.0, 24.0, capacity, int(diurnal.counts.sum() / 3))
    assert short.counts.sum() <= diurnal.counts.sum() / 3
    assert short.counts.size % 15 == 0 and short.counts.size < 240
    tiny, _ = scaled_window("mmpp", 4.0, 24.0, capacity, 1)
    assert tiny.counts.size == 15


def test_a_short_real_run_is_written_as_measured(tmp_path: Path) -> None:
    """The script's own path on 15 minutes of MMPP at two instances (seconds): the run's
    summaries, backtest and baselines reach the page, and its plots are written."""
    settings, planner = SimSettings(seed=3), PlannerConfig()
    result = evaluate(
        "inception-v3",
        "mmpp",
        hours=0.25,
        instances=2.0,
        max_requests=10**9,
        settings=settings,
        planner=planner,
        figures=tmp_path / "evaluation",
    )
    assert result.reactive_type in result.rows["reactive"]["instance_hours"]
    assert result.peak_instances == pytest.approx(2.0, rel=1e-2)
    assert "seed=102" in result.held_out
    assert sorted(p.name for p in (tmp_path / "evaluation").iterdir()) == sorted(
        f"{result.tag}-{n}.png"
        for n in ("capacity", "cost", "instances", "latency_ccdf", "attainment")
    )
    for name, row in result.rows.items():
        # the fleet by type and market covers the types the policy was billed for
        assert set(row["instances_by_market"]) <= set(row["instance_hours"]), name
        assert row["max_launches_per_tick"] <= row["launches"]
    # static holds its fleet all run: its peak is what it launched, its mean what it billed
    static = result.rows["static"]
    ((name, markets),) = static["instances_by_market"].items()
    assert markets["on-demand"]["peak"] == static["launches"]
    assert markets["on-demand"]["mean"] * result.hours == pytest.approx(
        static["instance_hours"][name], rel=1e-3
    )
    page = render_page(_setup(settings=settings, planner=planner), [result])
    od_bound = lower_bound_usd(result.rows, spot=False)
    for name, row in result.rows.items():
        assert f"| {name} | {row['cost_usd']:.2f} | {row['cost_usd'] / od_bound:.2f}x |" in page
    assert f"{result.requests:,} requests" in page
    checked = claims(result.rows, result.slo, result.kind)
    assert f"Claims: {sum(c.holds for c in checked) + 2} of {len(checked) + 2} hold." in page
