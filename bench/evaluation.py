"""Reproduce the MArk evaluation (USENIX ATC'19, section 6) at its scale in the simulator and
write docs/evaluation.md with its figures under docs/evaluation/.

    .venv/bin/python bench/evaluation.py [--hours 4] [--instances 24] [--models a,b] [--out DIR]

Each of the paper's four models runs on three workloads: the Twitter-like diurnal trace, the
MMPP trace and the diurnal trace with an unexpected +100% surge. Each run's window is scaled so
that its peak needs `--instances` instances of the type the planner buys: the one with the
lowest on-demand price per request at the SLO with batching over all the model's profiled types
(`cheapest_type(..., batching=True)`, as `static` picks it). Every policy (`POLICIES`) runs in the
mixed market (MArk-ondemand and MArk-spot side by side); the on-demand oracle runs as a second
pass. Costs are set against the oracles' lower bounds (`lower_bound_usd`), `static`, `skyserve`
and `reactive` (SageMaker, the paper's Table 5).

Held out: Mark's forecaster is the one with the lowest pinball loss in a backtest on traffic the
run does not replay: day 1 of the diurnal trace for a window of its day 2; a trace of the same
kind drawn by `traces.generators` with another seed, at the same scale, for MMPP and the surge.
No other knob is tuned: the planner runs `PlannerConfig()`'s defaults. Every policy's first
decision sees the day of traffic before the window (`history_before`; none on MMPP, whose
window starts the trace), as a system running before the window would have.

Windows: `--hours` long (4 h; the diurnal one ends at the full hour after day 2's peak, so it
holds the rise to the peak; the surge one starts a quarter of its length before the surge; MMPP
from its start), shortened in steps of 15 minutes where one policy would replay more than
`--max-requests` requests: the engine simulates a few million requests a second at this scale
(lstm-ptb's type serves ~1,900 req/s, so its peak is ~45k req/s) and the whole evaluation is
held under 20 minutes on two cores. Runs go to `--workers` processes (2).

The script runs in two steps so that the page can only say what the run measured: `evaluate`
simulates one model on one workload and returns a `RunResult` (the policies' summaries and the
run-time values the prose cites), and `render_page` turns the results into Markdown, a pure
function of them. The only fixed figures on the page are the paper's and SkyServe's own
(`PAPER_RATIO`, `SKYSERVE_SAVING_PCT`) and the targets the claims are checked against
(`TARGETS`).
"""

from __future__ import annotations

import argparse
import queue
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from multiprocessing import Manager
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mark.apps.simulator.engine import PolicyRun, SimSettings
from mark.apps.simulator.lower_bound import scenario_bound
from mark.apps.simulator.plots import write_plots
from mark.apps.simulator.policies import QueuePolicy, ReactivePolicy
from mark.apps.simulator.policies.base import cheapest_type
from mark.apps.simulator.report import policy_summary
from mark.apps.simulator.runner import Scenario, build_policies, simulate
from mark.core.catalog import Catalog, load_catalog
from mark.core.config import ForecastConfig, PlannerConfig
from mark.core.types import Model, Slo
from predictors.backtest import backtest, best_forecaster
from predictors.registry import available_forecasters
from provisioner.policy.capacity import CapacityCache
from traces import Trace, generators, read_trace, shipped_trace

__all__ = [
    "ABLATION_POLICIES",
    "POLICIES",
    "WORKLOADS",
    "Claim",
    "RunResult",
    "Setup",
    "claims",
    "evaluate",
    "lower_bound_usd",
    "render_page",
]

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# Every policy each run simulates, by `simulate`'s names (`mark` runs as mark-ondemand and
# mark-spot); a name added here appears in every run's table.
POLICIES = ("mark", "reactive", "queue", "queue-batch", "skyserve", "static", "oracle")
# Mark with one part switched off (mark.apps.simulator.runner.ABLATIONS; `mark-nospot` is
# mark-ondemand under another name), run for `--ablations-model` only: each costs a Mark run.
ABLATION_POLICIES = ("mark-noforecast", "mark-nobatch", "mark-nospill")
PAPER_RATIO = {  # SageMaker / MArk cost, paper Table 5: (on-demand, spot)
    "inception-v3": (3.63, 6.21),
    "nasnet": (2.79, 5.91),
    "lstm-ptb": (2.41, 6.64),
    "opennmt-ende": (3.15, 7.83),
}
# SkyServe (SpotHedge, EuroSys 2025): "43% lower cost" than serving all on-demand.
SKYSERVE_SAVING_PCT = 43.0
# The performance targets of issue 15, each a claim checked on every run.
TARGETS = {
    "ondemand_bound": 1.15,  # MArk-ondemand / on-demand lower bound, at most
    "ondemand_static": 0.75,  # MArk-ondemand / static on the diurnal trace, at most
    "spot_bound": 1.6,  # MArk-spot / all-spot lower bound, at most
    "spot_ondemand": 0.45,  # MArk-spot / MArk-ondemand, at most
    "oracle_launches": 3.0,  # launches / the oracle's of the same market, at most
}
INTERRUPTION_RATE_PER_HOUR = 0.02
DAY_S = 86_400.0
# The shipped surge traces' surge starts at generators.surge's default: day 2, 16:00.
SURGE_START_S = DAY_S + 16 * 3600.0
WINDOW_STEP_S = 900.0
# How much of the traffic before a window every policy has seen at its start: one day.
HISTORY_S = DAY_S


@dataclass(frozen=True)
class Workload:
    """One kind of traffic: the shipped trace a run replays a window of, and the held-out
    traffic its forecaster is chosen on (`held_out` draws it unscaled; `held_out_text` says
    what it is on the page)."""

    kind: str
    trace: str
    held_out_text: str
    held_out: Callable[[], Trace]


def _first_day() -> Trace:
    full = read_trace(shipped_trace("twitter-like-diurnal-2d"))
    n = int(DAY_S / full.bucket_s)
    return Trace(full.timestamps_s[:n], full.counts[:n], full.bucket_s)


def _surge_day_2(seed: int) -> Trace:
    full = generators.surge(surge_fraction=1.0, seed=seed)
    n = int(DAY_S / full.bucket_s)
    return Trace(full.timestamps_s[n:], full.counts[n:], full.bucket_s)


# Held-out seeds: the shipped trace's seed (traces/README.md) + 100.
WORKLOADS = {
    "diurnal": Workload(
        "diurnal",
        "twitter-like-diurnal-2d",
        "day 1 of twitter-like-diurnal-2d (24 h)",
        _first_day,
    ),
    "mmpp": Workload(
        "mmpp",
        "mmpp-4h",
        "`generators.mmpp(seed=102)` (4 h; the shipped trace is seed 2)",
        partial(generators.mmpp, seed=102),
    ),
    "surge": Workload(
        "surge",
        "surge-100",
        "day 2 of `generators.surge(surge_fraction=1.0, seed=104)` (24 h, its surge "
        "included; the shipped trace is seed 4)",
        partial(_surge_day_2, 104),
    ),
}


@dataclass(frozen=True)
class RunResult:
    """One model on one workload: everything the page says about it, all of it from this run.

    `rows` are the policies' `policy_summary` entries (oracle-ondemand included); `backtest`
    is every forecaster's pinball loss (% of the mean rate) on the held-out traffic, the one the
    run used first; `efficient_type` is the type the scale is set on, `efficient_rps` its
    batched capacity at the SLO and `peak_rps` the scaled window's peak; `window_s` the
    window replayed (trace time, start and end); `spot_discount_pct` the catalog's mean spot
    discount of each type MArk-spot ran; `history_h` how much traffic before the window every
    policy's first decision saw (hours); `wall_s` and `cpu_s` the run's wall and CPU time (they
    differ where other work shares the cores)."""

    model: str
    kind: str
    trace: str
    window_s: tuple[float, float]
    slo: Slo
    requests: int
    efficient_type: str
    efficient_rps: float
    peak_rps: float
    held_out: str
    backtest: tuple[tuple[str, float], ...]
    rows: Mapping[str, Mapping[str, Any]]
    reactive_type: str
    reactive_overprovision: float
    queue_max_replicas: int
    spot_discount_pct: Mapping[str, float]
    wall_s: float
    cpu_s: float
    history_h: float = 0.0

    @property
    def tag(self) -> str:
        return f"{self.model}-{self.kind}"

    @property
    def predictor(self) -> str:
        return self.backtest[0][0]

    @property
    def pinball_pct(self) -> float:
        return self.backtest[0][1]

    @property
    def hours(self) -> float:
        return (self.window_s[1] - self.window_s[0]) / 3600.0

    @property
    def peak_instances(self) -> float:
        return self.peak_rps / self.efficient_rps


@dataclass(frozen=True)
class Setup:
    """What the whole run was given (the command and the knobs the prose cites) and took."""

    command: str
    instances: float
    hours: float
    max_requests: int
    settings: SimSettings
    planner: PlannerConfig
    models: tuple[str, ...]
    kinds: tuple[str, ...]
    workers: int
    runtime_s: float
    ablations_model: str = ""


@dataclass(frozen=True)
class Claim:
    """A sentence the page asserts about one run, with the figures it was judged on."""

    text: str
    holds: bool

    def line(self) -> str:
        return f"- {'holds' if self.holds else '**does not hold**'}: {self.text}"


# ---------------------------------------------------------------------------------------------
# Running: one model on one workload


def efficient_type(model: Model, catalog: Catalog, cache: CapacityCache) -> tuple[str, float]:
    """The type the planner buys for the model: the lowest on-demand price per request at the
    SLO with batching over all its profiled types, and that capacity (req/s)."""
    prices = {t: catalog.instance_type(t).on_demand_price_per_hour for t in model.profiles}
    return cheapest_type(model, prices, cache, batching=True)


def _cut(trace: Trace, start_s: float, end_s: float, scale: float) -> Trace:
    keep = (trace.timestamps_s >= start_s - 1e-9) & (trace.timestamps_s < end_s - 1e-9)
    return Trace(trace.timestamps_s[keep], np.rint(trace.counts[keep] * scale), trace.bucket_s)


def _bounds(kind: str, trace: Trace, hours: float) -> tuple[float, float]:
    """The window of `hours` (trace time) a run of `kind` replays; see the module docstring."""
    length = hours * 3600.0
    if kind == "diurnal":
        day_2 = trace.timestamps_s >= DAY_S
        peak_s = float(trace.timestamps_s[day_2][np.argmax(trace.counts[day_2])])
        end = (np.floor(peak_s / 3600.0) + 1.0) * 3600.0
        return end - length, end
    if kind == "surge":
        lead = np.round(length / 4.0 / trace.bucket_s) * trace.bucket_s
        return SURGE_START_S - lead, SURGE_START_S - lead + length
    start = float(trace.timestamps_s[0])
    return start, start + length


def scaled_window(
    kind: str, hours: float, instances: float, capacity_rps: float, max_requests: int
) -> tuple[Trace, float]:
    """The run's window of the workload's trace, scaled so its peak needs `instances` of
    `capacity_rps`, and the scale: the longest window of at most `hours`, in steps of
    WINDOW_STEP_S, that replays at most `max_requests` (the shortest step if none does)."""
    full = read_trace(shipped_trace(WORKLOADS[kind].trace))
    steps = max(1, int(round(hours * 3600.0 / WINDOW_STEP_S)))
    for n in range(steps, 0, -1):
        start, end = _bounds(kind, full, n * WINDOW_STEP_S / 3600.0)
        window = _cut(full, start, end, 1.0)
        scale = instances * capacity_rps / float(window.rates_rps.max())
        scaled = _cut(full, start, end, scale)
        if scaled.counts.sum() <= max_requests or n == 1:
            return scaled, scale
    raise AssertionError("unreachable: the loop returns at n == 1")


def history_before(kind: str, start_s: float, scale: float) -> Trace:
    """The workload trace's last HISTORY_S before `start_s`, scaled as the run's window: what
    monitoring has recorded of a system that ran before the window (empty where the window
    starts the trace, as MMPP's does)."""
    full = read_trace(shipped_trace(WORKLOADS[kind].trace))
    return _cut(full, max(float(full.timestamps_s[0]), start_s - HISTORY_S), start_s, scale)


def held_out_scores(
    held_out: Trace, scale: float, planner: PlannerConfig
) -> tuple[tuple[str, float], ...]:
    """`_backtest` on the held-out traffic scaled as the run's window is (`scale`): the
    forecaster a run uses is the first."""
    scaled = Trace(held_out.timestamps_s, np.rint(held_out.counts * scale), held_out.bucket_s)
    return _backtest(scaled, planner)


def _backtest(held_out: Trace, planner: PlannerConfig) -> tuple[tuple[str, float], ...]:
    """What an operator does before going live (README, "Forecaster backtests"), on traffic the
    run does not replay: backtest every forecaster at the planner's horizon and take the one
    with the lowest pinball loss of the upper quantile (`best_forecaster`'s choice). Returns
    every forecaster's name and loss (%), that one first, then the rest best first."""
    forecast = ForecastConfig()
    if held_out.bucket_s != forecast.bucket_s:
        raise ValueError(
            f"trace buckets of {held_out.bucket_s} s, forecaster's {forecast.bucket_s} s"
        )
    horizon = int(np.ceil(planner.horizon_s / forecast.bucket_s))
    results = [
        backtest(held_out, name, horizon_buckets=horizon, quantile=forecast.quantile)
        for name in available_forecasters()
    ]
    best = best_forecaster(results)
    rest = sorted((r for r in results if r is not best), key=lambda r: r.pinball_pct)
    return tuple((r.predictor, r.pinball_pct) for r in [best, *rest])


def _spot_discount_pct(catalog: Catalog, types: Iterable[str]) -> dict[str, float]:
    """The mean spot price of each type over the catalog's sample, as % below on-demand."""
    out: dict[str, float] = {}
    for name in types:
        prices = [p.price_per_hour for p in catalog.spot_history if p.instance_type == name]
        if prices:
            on_demand = catalog.instance_type(name).on_demand_price_per_hour
            out[name] = 100.0 * (1.0 - float(np.mean(prices)) / on_demand)
    return out


def _thinned(run: PolicyRun, points: int = 20_000) -> PolicyRun:
    """The run with its latencies cut to `points` order statistics (what the CCDF draws), so a
    worker holds tens of millions of requests for one policy at a time, not for all."""
    lat = np.sort(run.latencies_ms)
    step = max(1, lat.size // points)
    return replace(run, latencies_ms=lat[::step])


def evaluate(
    model_name: str,
    kind: str,
    *,
    hours: float,
    instances: float,
    max_requests: int,
    settings: SimSettings,
    planner: PlannerConfig,
    figures: Path | None = None,
    progress: Callable[[str, str], None] | None = None,
    ablations: bool = False,
) -> RunResult:
    """Scale the window, pick the forecaster on the held-out traffic, run every policy (and the
    on-demand oracle) and collect what the page needs; with `figures`, write the run's plots
    there as `{tag}-*.png`. `progress(tag, step)` is called after each step."""
    started, cpu_started = time.perf_counter(), time.process_time()
    tag = f"{model_name}-{kind}"
    catalog = load_catalog()
    entry = catalog.model(model_name)
    model = entry.to_model()
    cache = CapacityCache(budget_fraction=settings.batching.slo_budget_fraction)
    chosen, capacity = efficient_type(model, catalog, cache)
    trace, scale = scaled_window(kind, hours, instances, capacity, max_requests)
    workload = WORKLOADS[kind]
    scores = held_out_scores(workload.held_out(), scale, planner)
    if progress is not None:
        progress(tag, "backtest")
    history = history_before(kind, float(trace.timestamps_s[0]), scale)
    scenario = Scenario(
        market="mixed",
        planner=planner,
        forecast=ForecastConfig(predictor=scores[0][0]),
        model=model,
        trace=trace,
        catalog=catalog,
        settings=settings,
        serverless_latency_ms=entry.serverless_latency_ms,
        serverless_memory_mb=entry.serverless_memory_mb,
        oracle_time_limit_s=30.0,
        history=history,
    )
    names = POLICIES + (ABLATION_POLICIES if ablations else ())
    passes = [(scenario, name) for name in names]
    passes.append((replace(scenario, market="ondemand"), "oracle"))
    runs: list[PolicyRun] = []
    rows: dict[str, dict[str, Any]] = {}
    for i, (market_scenario, name) in enumerate(passes):
        for run in simulate(market_scenario, [name]):
            if i == len(passes) - 1:
                run.name = "oracle-ondemand"
            rows[run.name] = policy_summary(run, entry.slo)  # on every request's latency
            runs.append(_thinned(run))
        if progress is not None:
            progress(tag, name)
    for market, row in (("spot", "oracle"), ("ondemand", "oracle-ondemand")):
        rows[row]["bound_usd"] = scenario_bound(scenario, spot=market == "spot").usd
    if progress is not None:
        progress(tag, "bound")
    reactive, queue_policy = build_policies(scenario, ["reactive", "queue"])
    assert isinstance(reactive, ReactivePolicy) and isinstance(queue_policy, QueuePolicy)
    if figures is not None:
        figures.mkdir(parents=True, exist_ok=True)
        write_plots(runs, entry.slo, figures, prefix=f"{tag}-")
    return RunResult(
        model=model_name,
        kind=kind,
        trace=workload.trace,
        window_s=(float(trace.timestamps_s[0]), float(trace.timestamps_s[-1] + trace.bucket_s)),
        slo=entry.slo,
        requests=int(trace.counts.sum()),
        efficient_type=chosen,
        efficient_rps=capacity,
        peak_rps=float(trace.rates_rps.max()),
        held_out=workload.held_out_text,
        backtest=scores,
        rows=rows,
        reactive_type=reactive.instance_type,
        reactive_overprovision=1.0 / reactive.safety_factor,
        queue_max_replicas=queue_policy.max_replicas,
        spot_discount_pct=_spot_discount_pct(catalog, rows["mark-spot"]["instance_hours"]),
        wall_s=time.perf_counter() - started,
        cpu_s=time.process_time() - cpu_started,
        history_h=history.counts.size * history.bucket_s / 3600.0,
    )


# ---------------------------------------------------------------------------------------------
# Judging: the lower bounds and the claims


def lower_bound_usd(rows: Mapping[str, Mapping[str, Any]], *, spot: bool) -> float:
    """The least any policy that meets the SLO could have paid on the run, spot allowed or
    on-demand only (`mark.apps.simulator.lower_bound.scenario_bound`: every instance at its
    throughput ceiling within the SLO, the miss allowance, no launch delay or billing minimum),
    kept beside the oracle row of the same market as `bound_usd`."""
    return float(rows["oracle" if spot else "oracle-ondemand"]["bound_usd"])


def _attained(share: float, asked: float = 1.0) -> str:
    """A share as a percentage with two decimals, more where two would round a miss up to
    100.00% or to the share `asked` (99.998% must not read as a perfect run, nor 97.998% as
    one that met 98%)."""
    digits = 2

    def rounds_up(to: float) -> bool:
        return share < to and f"{share:.{digits}%}" == f"{to:.{digits}%}"

    while (rounds_up(1.0) or rounds_up(asked)) and digits < 6:
        digits += 1
    return f"{share:.{digits}%}"


def claims(rows: Mapping[str, Mapping[str, Any]], slo: Slo, kind: str) -> list[Claim]:
    """Issue 15's performance targets, checked on one run, each worded with its figures. The
    static target is for the diurnal trace only; the SkyServe one only where SkyServe meets
    the SLO."""
    od, spot, static, sky = (rows[n] for n in ("mark-ondemand", "mark-spot", "static", "skyserve"))
    od_bound, spot_bound = lower_bound_usd(rows, spot=False), lower_bound_usd(rows, spot=True)
    out = [
        Claim(
            f"{name} meets the SLO ({_attained(row['slo_attainment'], slo.percentile)} within "
            f"{slo.latency_ms:g} ms, {slo.percentile:.0%} asked)",
            row["slo_attainment"] >= slo.percentile,
        )
        for name, row in (("MArk-ondemand", od), ("MArk-spot", spot))
    ]
    ratio = od["cost_usd"] / od_bound
    out.append(
        Claim(
            f"MArk-ondemand at most {TARGETS['ondemand_bound']:g}x the on-demand lower bound "
            f"({ratio:.2f}x: ${od['cost_usd']:.2f} against ${od_bound:.2f})",
            ratio <= TARGETS["ondemand_bound"],
        )
    )
    if kind == "diurnal":
        ratio = od["cost_usd"] / static["cost_usd"]
        out.append(
            Claim(
                f"MArk-ondemand at most {TARGETS['ondemand_static']:g}x static ({ratio:.2f}x: "
                f"${od['cost_usd']:.2f} against ${static['cost_usd']:.2f})",
                ratio <= TARGETS["ondemand_static"],
            )
        )
    ratio = spot["cost_usd"] / spot_bound
    out.append(
        Claim(
            f"MArk-spot at most {TARGETS['spot_bound']:g}x the all-spot lower bound "
            f"({ratio:.2f}x: ${spot['cost_usd']:.2f} against ${spot_bound:.2f})",
            ratio <= TARGETS["spot_bound"],
        )
    )
    ratio = spot["cost_usd"] / od["cost_usd"]
    out.append(
        Claim(
            f"MArk-spot at most {TARGETS['spot_ondemand']:g}x MArk-ondemand ({ratio:.2f}x)",
            ratio <= TARGETS["spot_ondemand"],
        )
    )
    if sky["slo_attainment"] >= slo.percentile:
        out.append(
            Claim(
                f"MArk-spot cheaper than skyserve, which meets the SLO (${spot['cost_usd']:.2f} "
                f"against ${sky['cost_usd']:.2f})",
                spot["cost_usd"] < sky["cost_usd"],
            )
        )
    for name, row, oracle in (
        ("MArk-ondemand", od, "oracle-ondemand"),
        ("MArk-spot", spot, "oracle"),
    ):
        theirs = rows[oracle]["launches"]
        out.append(
            Claim(
                f"{name} launches at most {TARGETS['oracle_launches']:g}x {oracle}'s "
                f"({row['launches']} against {theirs})",
                row["launches"] <= TARGETS["oracle_launches"] * theirs,
            )
        )
    return out


def cap_claims(rows: Mapping[str, Mapping[str, Any]], planner: PlannerConfig) -> list[Claim]:
    """No decision of Mark's launched more than the planner's per-tick cap."""
    cap = planner.max_launches_per_tick
    return [
        Claim(
            f"{name} never launches more than max_launches_per_tick {cap} in one tick "
            f"(at most {rows[key]['max_launches_per_tick']})",
            rows[key]["max_launches_per_tick"] <= cap,
        )
        for name, key in (("MArk-ondemand", "mark-ondemand"), ("MArk-spot", "mark-spot"))
    ]


def _checked(result: RunResult, planner: PlannerConfig) -> list[Claim]:
    return [*claims(result.rows, result.slo, result.kind), *cap_claims(result.rows, planner)]


# ---------------------------------------------------------------------------------------------
# Writing: the page as a function of the results


def _span(values: Iterable[float], fmt: str, unit: str = "") -> str:
    """`lo-hi` of the values as formatted, one figure where they format the same."""
    ordered = sorted(values)
    lo, hi = format(ordered[0], fmt), format(ordered[-1], fmt)
    return f"{lo}{unit}" if lo == hi else f"{lo}-{hi}{unit}"


def _clock(t_s: float) -> str:
    """Trace time as `day N HH:MM` (day 1 starts at 0)."""
    day, rest = divmod(int(round(t_s)), int(DAY_S))
    return f"day {day + 1} {rest // 3600:02d}:{rest % 3600 // 60:02d}"


def _window_text(result: RunResult) -> str:
    start, end = result.window_s
    return f"{_clock(start)}-{_clock(end)[-5:]} ({result.hours:g} h)"


def _fleet(row: Mapping[str, Any]) -> str:
    """`type market peak/mean` for each (type, market) the policy ran."""
    parts = [
        f"{name} {market} {figures['peak']}/{figures['mean']:.1f}"
        for name, markets in row.get("instances_by_market", {}).items()
        for market, figures in markets.items()
    ]
    return ", ".join(parts) or "-"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _table(result: RunResult) -> list[str]:
    rows, slo = result.rows, result.slo
    od_bound = lower_bound_usd(rows, spot=False)
    spot_bound = lower_bound_usd(rows, spot=True)
    out = [
        "| policy | cost $ | / on-demand bound | / spot bound | SLO attained | p50 ms | p99 ms "
        "| spilled | interrupted | launches | instances peak/mean by type and market |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in rows.items():
        missed = "" if r["slo_attainment"] >= slo.percentile else " (misses SLO)"
        out.append(
            f"| {name} | {r['cost_usd']:.2f} | {r['cost_usd'] / od_bound:.2f}x | "
            f"{r['cost_usd'] / spot_bound:.2f}x | "
            f"{_attained(r['slo_attainment'], slo.percentile)}{missed} | "
            f"{_ms(r['p50_ms'])} | {_ms(r['p99_ms'])} | {r['spilled']:,} | "
            f"{r.get('interrupted', 0)} | {r.get('launches', 0)} | {_fleet(r)} |"
        )
    return out


def _run_section(result: RunResult, planner: PlannerConfig) -> list[str]:
    runner_up = (
        f"; runner-up `{result.backtest[1][0]}` at {result.backtest[1][1]:.2f}%"
        if len(result.backtest) > 1
        else ""
    )
    return [
        f"## {result.model} on {result.trace}, {_window_text(result)}",
        "",
        f"SLO {result.slo.percentile:.0%} within {result.slo.latency_ms:g} ms; "
        f"{result.requests:,} requests; peak {result.peak_rps:,.0f} req/s = "
        f"{result.peak_instances:.1f} x `{result.efficient_type}` "
        f"({result.efficient_rps:,.1f} req/s each at the SLO, batched). Forecaster "
        f"`{result.predictor}`, chosen on {result.held_out} (pinball loss "
        f"{result.pinball_pct:.2f}% of the mean rate{runner_up}). Wall time "
        f"{result.wall_s:.0f} s (CPU {result.cpu_s:.0f} s).",
        "",
        *_table(result),
        "",
        *[c.line() for c in _checked(result, planner)],
        "",
        f"![cost](evaluation/{result.tag}-cost.png) "
        f"![instances](evaluation/{result.tag}-instances.png) "
        f"![latency](evaluation/{result.tag}-latency_ccdf.png) "
        f"![attainment](evaluation/{result.tag}-attainment.png)",
        "",
    ]


def _header(setup: Setup, results: list[RunResult]) -> list[str]:
    notice_min = setup.settings.interruption_notice_s / 60.0
    overprovision = _span((r.reactive_overprovision for r in results), "g", "x")
    planner = setup.planner
    return [
        "# Evaluation: Mark at the paper's scale, against the baselines and the lower bounds",
        "",
        "Generated by `bench/evaluation.py` (do not edit by hand). Command:",
        "",
        f"    {setup.command}",
        "",
        "Policies (docstrings in `mark/apps/simulator/policies/`): `mark-ondemand` and "
        "`mark-spot` (the live planner, forecaster, batching and spill rule), `reactive` "
        f"(SageMaker target tracking, {overprovision} over-provisioning, ml.* prices, on the "
        "type a user picks with the model server's own batching), `queue` (Ray Serve "
        "defaults, unbatched) and `queue-batch` (the same with `@serve.batch`), `skyserve` "
        "(SpotHedge), `static` (peak-provisioned on the type the planner buys), `oracle` (MILP "
        "with perfect knowledge, spot allowed) and `oracle-ondemand` (the same, on-demand "
        f"only); for {setup.ablations_model or 'no model'} also Mark's ablations "
        "(`mark-noforecast`: the last observed rate, no band; `mark-nobatch`; `mark-nospill`; "
        "each against `mark-spot`). The lower bounds (`mark/apps/simulator/lower_bound.py`) "
        "let every instance serve its throughput ceiling within the SLO, with the SLO's miss "
        "allowance, no launch delay and no billing minimum: no policy that meets the SLO in "
        "the simulator pays less. Spot interruptions: "
        f"{setup.settings.interruption_rate_per_hour:g} per instance-hour with a "
        f"{notice_min:g}-minute notice. Planner: `PlannerConfig()` defaults "
        f"(max_launches_per_tick {planner.max_launches_per_tick}, "
        f"max_launches_per_type_per_tick {planner.max_launches_per_type_per_tick}, "
        f"spot_max_share {planner.spot_max_share:g} over spot_min_pools "
        f"{planner.spot_min_pools}).",
        "",
        f"Scale: each run's window is scaled so that its peak needs {setup.instances:g} "
        "instances of the type the planner buys, the lowest on-demand price per request at "
        "the SLO with batching over all the model's profiled types: "
        + "; ".join(
            f"{m} `{t}` ({c:,.1f} req/s)"
            for m, t, c in dict.fromkeys(
                (r.model, r.efficient_type, r.efficient_rps) for r in results
            )
        )
        + ".",
        "",
    ]


def _windows(setup: Setup, results: list[RunResult]) -> list[str]:
    """Which window each run replayed and which data chose what."""
    lines = [
        "## Windows, and which data chose what",
        "",
        "| model | workload | window replayed | requests | peak req/s | forecaster | chosen on |",
        "|---|---|---|---:|---:|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.model} | {r.trace} | {_window_text(r)} | {r.requests:,} | "
            f"{r.peak_rps:,.0f} | `{r.predictor}` | {r.held_out} |"
        )
    short = [r for r in results if r.hours < setup.hours - 1e-9]
    cut = (
        "Shortened to stay within "
        f"{setup.max_requests:,} requests per policy: "
        + ", ".join(f"{r.tag} {r.hours:g} h" for r in short)
        + "."
        if short
        else f"No window needed shortening ({setup.max_requests:,} requests per policy at most)."
    )
    return [
        *lines,
        "",
        f"Windows are {setup.hours:g} h: on the diurnal trace ending at the full hour after "
        "day 2's peak (so the rise to the peak is in it), on the surge trace starting a "
        "quarter of the window before the surge (day 2 16:00), on MMPP from its start. "
        f"{cut} Held out: the forecaster of each run is the one with the lowest pinball loss "
        "of the upper quantile at the planner's horizon (`best_forecaster`) in a backtest on "
        "the traffic named above, scaled as the run's window is, never on the window replayed. "
        "No other tunable was chosen on these traces: the planner, batching and spill rule run "
        "their defaults. Every policy starts with the fleet its first decision buys (ready at "
        "once, Mark's per-tick launch caps lifted for it), and that decision sees the traffic "
        "before the window, as monitoring would have recorded it: "
        + "; ".join(
            f"{kind} {_span((r.history_h for r in results if r.kind == kind), 'g', ' h')}"
            for kind in dict.fromkeys(r.kind for r in results)
        )
        + " (0 h: the window starts the trace, so Mark's forecaster starts cold there). "
        "The scale, `static`'s fleet and `queue`'s max_replicas (set from the "
        "peak need, "
        f"{_span((r.queue_max_replicas for r in results), 'd')} here) are read from the "
        "replayed window's peak, a knowledge that favours those baselines; the oracles know the "
        "whole window.",
        "",
    ]


def _headline(results: list[RunResult]) -> list[str]:
    """The headline ratios per run beside the paper's Table 5 and SkyServe's reported saving."""
    lines = [
        "## Headline",
        "",
        "| model | workload | MArk-ondemand / on-demand bound | MArk-spot / spot bound "
        "| MArk-spot saves over MArk-ondemand (SkyServe reports "
        f"{SKYSERVE_SAVING_PCT:g}% over all on-demand) | reactive / MArk-ondemand (paper's "
        "Table 5) | reactive / MArk-spot (paper's Table 5) | skyserve / MArk-spot "
        "(skyserve's SLO attained) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        rows = r.rows
        od, spot = rows["mark-ondemand"]["cost_usd"], rows["mark-spot"]["cost_usd"]
        ref, sky = rows["reactive"]["cost_usd"], rows["skyserve"]
        paper = [f" ({p}x)" for p in PAPER_RATIO[r.model]] if r.model in PAPER_RATIO else ["", ""]
        lines.append(
            f"| {r.model} | {r.kind} | {od / lower_bound_usd(rows, spot=False):.2f}x | "
            f"{spot / lower_bound_usd(rows, spot=True):.2f}x | {100 * (1 - spot / od):.0f}% | "
            f"{ref / od:.2f}x{paper[0]} | {ref / spot:.2f}x{paper[1]} | "
            f"{sky['cost_usd'] / spot:.2f}x ({_attained(sky['slo_attainment'], r.slo.percentile)})"
            " |"
        )
    return [*lines, ""]


def _closing(setup: Setup, results: list[RunResult]) -> list[str]:
    def ratio(r: RunResult, num: str, spot: bool) -> float:
        return r.rows[num]["cost_usd"] / lower_bound_usd(r.rows, spot=spot)

    od = [ratio(r, "mark-ondemand", False) for r in results]
    spot = [ratio(r, "mark-spot", True) for r in results]
    savings = [
        100 * (1 - r.rows["mark-spot"]["cost_usd"] / r.rows["mark-ondemand"]["cost_usd"])
        for r in results
    ]
    sagemaker = [
        r.rows["reactive"]["cost_usd"] / r.rows["mark-ondemand"]["cost_usd"] for r in results
    ]
    discounts: dict[str, float] = {}
    for r in results:
        discounts.update(r.spot_discount_pct)
    discount_text = (
        f" (the catalog's mean spot discounts on the types MArk-spot ran: "
        f"{_span(discounts.values(), '.0f', '%')})"
        if discounts
        else ""
    )
    interrupted = sum(r.rows["mark-spot"].get("interrupted", 0) for r in results)
    missed = [
        f"{r.tag} {name}"
        for r in results
        for name in ("mark-ondemand", "mark-spot")
        if r.rows[name]["slo_attainment"] < r.slo.percentile
    ]
    return [
        "## Closing note",
        "",
        f"Over {len(results)} runs MArk-ondemand cost {_span(od, '.2f', 'x')} the on-demand "
        f"lower bound (target {TARGETS['ondemand_bound']:g}x) and MArk-spot "
        f"{_span(spot, '.2f', 'x')} the all-spot bound (target {TARGETS['spot_bound']:g}x). "
        f"MArk-spot saved {_span(savings, '.0f', '%')} over MArk-ondemand{discount_text}, "
        f"against SkyServe's reported {SKYSERVE_SAVING_PCT:g}% over all on-demand; "
        f"{interrupted} spot interruptions happened to MArk-spot in all. `reactive` "
        f"(SageMaker) cost {_span(sagemaker, '.2f', 'x')} MArk-ondemand (the paper's Table 5: "
        f"{_span((v[0] for v in PAPER_RATIO.values()), '.2f', 'x')}). "
        + (
            f"Mark missed the SLO on: {', '.join(missed)}. "
            if missed
            else "Mark met the SLO on every run. "
        )
        + "Tunables: the forecaster of each run was chosen on held-out traffic (the table "
        "above); everything else is `PlannerConfig()`'s, `BatchingConfig()`'s and "
        "`SpillConfig()`'s defaults, chosen on none of these traces.",
        "",
    ]


def render_page(setup: Setup, results: list[RunResult]) -> str:
    """The whole of docs/evaluation.md from the run's results: the setup, the headline beside
    the paper's and SkyServe's figures, the windows and what chose what, the claims, then one
    section per run in the order given."""
    checked = [(r, c) for r in results for c in _checked(r, setup.planner)]
    held = sum(c.holds for _, c in checked)
    per_run = [(r.tag, [c.holds for c in _checked(r, setup.planner)]) for r in results]
    failing = [f"{tag} {h.count(False)} of {len(h)}" for tag, h in per_run if not all(h)]
    omitted = [m for m in PAPER_RATIO if m not in setup.models]
    lines = [
        *_header(setup, results),
        *_headline(results),
        *_windows(setup, results),
        f"Claims: {held} of {len(checked)} hold. A claim marked **does not hold** is reported "
        "as measured, not tuned away (each under its run below)"
        + (f"; not holding: {', '.join(failing)}." if failing else "."),
        "",
        *([f"Not in this run: {', '.join(omitted)}.", ""] if omitted else []),
        f"Total runtime: {setup.runtime_s:.0f} s with {setup.workers} worker process(es); "
        f"the runs took {sum(r.cpu_s for r in results):.0f} CPU-seconds in all.",
        "",
        *_closing(setup, results),
    ]
    for r in results:
        lines += _run_section(r, setup.planner)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The command


def _done_line(result: RunResult, planner: PlannerConfig) -> str:
    """One finished run in the log, as the page will give it."""
    rows = result.rows
    checked = _checked(result, planner)
    od = rows["mark-ondemand"]["cost_usd"] / lower_bound_usd(rows, spot=False)
    spot = rows["mark-spot"]["cost_usd"] / lower_bound_usd(rows, spot=True)
    return (
        f"{result.tag}: {_window_text(result)}, {result.requests:,} requests, wall "
        f"{result.wall_s:.0f} s, CPU {result.cpu_s:.0f} s; MArk-ondemand {od:.2f}x its bound, "
        f"MArk-spot {spot:.2f}x; {sum(c.holds for c in checked)} of {len(checked)} claims hold"
    )


def _report(channel: Any, tag: str, step: str) -> None:
    channel.put((tag, step))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hours", type=float, default=4.0)
    parser.add_argument("--instances", type=float, default=24.0)
    parser.add_argument("--max-requests", type=int, default=80_000_000)
    parser.add_argument("--models", default=",".join(PAPER_RATIO))
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--ablations-model",
        default="inception-v3",
        help="the model whose runs add Mark's ablations (none: '')",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DOCS,
        help="folder for evaluation.md and evaluation/*.png (default: the repository's docs/)",
    )
    args = parser.parse_args()
    models = tuple(args.models.split(","))
    kinds = tuple(args.workloads.split(","))
    figures = args.out / "evaluation"
    settings = SimSettings(seed=args.seed, interruption_rate_per_hour=INTERRUPTION_RATE_PER_HOUR)
    planner = PlannerConfig()
    command = (
        f".venv/bin/python bench/evaluation.py --hours {args.hours:g} --instances "
        f"{args.instances:g} --max-requests {args.max_requests} --models {args.models} "
        f"--workloads {args.workloads} --workers {args.workers} --seed {args.seed} "
        f"--ablations-model '{args.ablations_model}'"
    )
    if args.out.resolve() != DOCS:
        command += f" --out {args.out}"
    jobs = [(m, k) for m in models for k in kinds]
    started = time.perf_counter()
    with (
        Manager() as manager,
        ProcessPoolExecutor(args.workers) as pool,
        Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
        ) as bar,
    ):
        channel = manager.Queue()
        # the backtest, each policy, the on-demand oracle, the bounds
        steps = {m: len(POLICIES) + 3 for m in models}
        if args.ablations_model in steps:
            steps[args.ablations_model] += len(ABLATION_POLICIES)
        tasks = {f"{m}-{k}": bar.add_task(f"{m}-{k}", total=steps[m]) for m, k in jobs}
        futures: list[Future[RunResult]] = [
            pool.submit(
                evaluate,
                m,
                k,
                hours=args.hours,
                instances=args.instances,
                max_requests=args.max_requests,
                settings=settings,
                planner=planner,
                figures=figures,
                progress=partial(_report, channel),
                ablations=m == args.ablations_model,
            )
            for m, k in jobs
        ]
        reported: set[int] = set()
        while len(reported) < len(futures):
            try:
                tag, step = channel.get(timeout=0.5)
                bar.update(tasks[tag], advance=1, description=f"{tag}: {step}")
            except queue.Empty:
                pass
            for i, future in enumerate(futures):
                if future.done() and i not in reported:
                    reported.add(i)
                    bar.console.print(_done_line(future.result(), planner))
        results = [f.result() for f in futures]
    setup = Setup(
        command=command,
        instances=args.instances,
        hours=args.hours,
        max_requests=args.max_requests,
        settings=settings,
        planner=planner,
        models=models,
        kinds=kinds,
        workers=args.workers,
        runtime_s=time.perf_counter() - started,
        ablations_model=args.ablations_model,
    )
    doc = args.out / "evaluation.md"
    doc.write_text(render_page(setup, results), encoding="utf-8")
    print(f"wrote {doc} in {setup.runtime_s:.0f} s")


if __name__ == "__main__":
    main()
