"""Reproduce the MArk evaluation (USENIX ATC'19, section 6) in the simulator and write
docs/evaluation.md with its figures under docs/evaluation/.

    .venv/bin/python bench/evaluation.py [--hours 8] [--models inception-v3,nasnet,...] [--out DIR]

For each model (the paper's four) on the Twitter-like diurnal trace (its first `--hours`, the
paper ran 8 h) and the MMPP trace (4 h), every policy runs in the mixed market (MArk-ondemand
and MArk-spot side by side); the on-demand oracle runs as a second pass, since MArk-ondemand is
held to the cheapest on-demand plan. Then the surge traces (+75%, +100% unexpected load) for
Inception-v3. Mark's forecaster is, per run, the one with the lowest pinball loss in a backtest on
the trace (what `mark forecast-eval` reports as best). Costs are normalised to `reactive`
(SageMaker), as the paper's Table 5. The shipped traces are scaled per model so that the peak
needs `--instances` instances of the model's most cost-efficient c5 type (the paper's base
family) at the SLO (the paper ran up to 42 c5 + 10 m5 + 12 p2 instances).

The script runs in two steps so that the page can only say what the run measured: `evaluate`
simulates one model on one trace and returns a `RunResult` (the policies' summaries and the
run-time values the prose cites: the backtest, the baselines' settings, catalog figures), and
`render_page` turns those results into the Markdown, a pure function of them. The only fixed
figures on the page are the paper's own (`PAPER_RATIO`, `PAPER_FAMILIES`) and the thresholds the
claims are checked against (`ORACLE_SLACK`).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from mark.apps.simulator.engine import PolicyRun, SimSettings
from mark.apps.simulator.plots import write_plots
from mark.apps.simulator.policies import QueuePolicy, ReactivePolicy
from mark.apps.simulator.policies.base import cheapest_type, unbatched_capacity_rps
from mark.apps.simulator.report import policy_summary
from mark.apps.simulator.runner import Scenario, build_policies, simulate
from mark.core.catalog import Catalog, load_catalog
from mark.core.config import ForecastConfig, PlannerConfig
from mark.core.types import AcceleratorKind, Model, Slo
from predictors.backtest import backtest, best_forecaster
from predictors.registry import available_forecasters
from provisioner.policy.capacity import CapacityCache
from traces import Trace, read_trace, shipped_trace

__all__ = ["Claim", "RunResult", "Setup", "claims", "evaluate", "render_page"]

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
POLICIES = ["mark", "reactive", "queue", "skyserve", "static", "oracle"]
PAPER_RATIO = {  # SageMaker / MArk cost, paper Table 5: (on-demand, spot)
    "inception-v3": (3.63, 6.21),
    "nasnet": (2.79, 5.91),
    "lstm-ptb": (2.41, 6.64),
    "opennmt-ende": (3.15, 7.83),
}
# Instance families of the paper's fleet (section 6: up to 42 c5 + 10 m5 + 12 p2.xlarge).
PAPER_FAMILIES = ("c5", "m5", "p2")
# MArk-ondemand is held to this multiple of the on-demand oracle's cost (a claim, checked per run).
ORACLE_SLACK = 1.25
INTERRUPTION_RATE_PER_HOUR = 0.02
DIURNAL, MMPP = "twitter-like-diurnal-2d", "mmpp-4h"
SURGES = ("surge-75", "surge-100")
SURGE_MODEL = "inception-v3"
PLOTS = ("cost", "instances", "capacity", "latency_ccdf")


@dataclass(frozen=True)
class RunResult:
    """One model on one trace: everything the page says about it, all of it from this run.

    `rows` are the policies' `policy_summary` entries (oracle-ondemand included); `backtest`
    is every forecaster's pinball loss (% of the mean rate), the one the run used first;
    `cpu_premium` is the cheapest CPU type's price per request at the SLO over the model's most
    cost-efficient type's (None when no CPU type meets the SLO); `spot_discount_pct` is the
    catalog's mean spot discount of each type MArk-spot ran."""

    model: str
    trace: str
    hours: float | None  # the first `hours` of the trace; None: all of it
    surge: bool
    slo: Slo
    requests: int
    backtest: tuple[tuple[str, float], ...]
    rows: Mapping[str, Mapping[str, Any]]
    reactive_type: str
    reactive_overprovision: float
    queue_max_replicas: int
    queue_downscale_delay_s: float
    queue_launch_overhead_s: float
    cpu_premium: float | None
    spot_discount_pct: Mapping[str, float]

    @property
    def tag(self) -> str:
        return f"{self.model}-{self.trace}"

    @property
    def predictor(self) -> str:
        return self.backtest[0][0]

    @property
    def pinball_pct(self) -> float:
        return self.backtest[0][1]


@dataclass(frozen=True)
class Setup:
    """What the whole run was given (the command and the knobs the prose cites) and took."""

    command: str
    instances: float
    settings: SimSettings
    planner: PlannerConfig
    models: tuple[str, ...]
    runtime_s: float


@dataclass(frozen=True)
class Claim:
    """A sentence the page asserts about one run, with the figures it was judged on."""

    text: str
    holds: bool

    def line(self) -> str:
        return f"- {'holds' if self.holds else '**does not hold**'}: {self.text}"


# ---------------------------------------------------------------------------------------------
# Running: one model on one trace


def _scaled(name: str, hours: float | None, model_name: str, target_instances: float) -> Trace:
    full = read_trace(shipped_trace(name))
    n = full.counts.size if hours is None else int(hours * 3600 / full.bucket_s)
    catalog = load_catalog()
    model = catalog.model(model_name).to_model()
    cache = CapacityCache()
    c5 = [t for t in model.profiles if t.startswith("c5.")]
    best = min(
        (t for t in c5 if unbatched_capacity_rps(model, t, cache) > 0),
        key=lambda t: (
            catalog.instance_type(t).on_demand_price_per_hour
            / unbatched_capacity_rps(model, t, cache)
        ),
    )
    cap = unbatched_capacity_rps(model, best, cache)
    peak = float(full.rates_rps[:n].max())
    scale = target_instances * cap / peak
    return Trace(full.timestamps_s[:n], np.rint(full.counts[:n] * scale), full.bucket_s)


def _backtest(trace: Trace, planner: PlannerConfig) -> tuple[tuple[str, float], ...]:
    """What an operator does before going live (README, "Forecaster backtests"): backtest every
    forecaster on the traffic at the planner's horizon and set `forecast.predictor` to the one
    with the lowest pinball loss of the upper quantile (`best_forecaster`'s choice). Returns
    every forecaster's name and loss (%), that one first, then the rest best first."""
    forecast = ForecastConfig()
    if trace.bucket_s != forecast.bucket_s:
        raise ValueError(f"trace buckets of {trace.bucket_s} s, forecaster's {forecast.bucket_s} s")
    horizon = int(np.ceil(planner.horizon_s / forecast.bucket_s))
    results = [
        backtest(trace, name, horizon_buckets=horizon, quantile=forecast.quantile)
        for name in available_forecasters()
    ]
    best = best_forecaster(results)
    rest = sorted((r for r in results if r is not best), key=lambda r: r.pinball_pct)
    return tuple((r.predictor, r.pinball_pct) for r in [best, *rest])


def _cpu_premium(model: Model, catalog: Catalog, cache: CapacityCache) -> float | None:
    """How many times more a request costs on the cheapest CPU type than on the model's most
    cost-efficient type, both at their batched capacity at the SLO and on-demand list price:
    what a stopgap bought for a near-term tail would cost (PlannerConfig.tail_after_lead)."""
    prices = {t: catalog.instance_type(t).on_demand_price_per_hour for t in model.profiles}
    cpu = {
        t: p
        for t, p in prices.items()
        if catalog.instance_type(t).accelerator == AcceleratorKind.NONE
    }
    try:
        best, best_rps = cheapest_type(model, prices, cache, batching=True)
        cheapest_cpu, cpu_rps = cheapest_type(model, cpu, cache, batching=True)
    except ValueError:  # no (CPU) type meets the SLO
        return None
    return (prices[cheapest_cpu] / cpu_rps) / (prices[best] / best_rps)


def _spot_discount_pct(catalog: Catalog, types: Iterable[str]) -> dict[str, float]:
    """The mean spot price of each type over the catalog's sample, as % below on-demand."""
    out: dict[str, float] = {}
    for name in types:
        prices = [p.price_per_hour for p in catalog.spot_history if p.instance_type == name]
        if prices:
            on_demand = catalog.instance_type(name).on_demand_price_per_hour
            out[name] = 100.0 * (1.0 - float(np.mean(prices)) / on_demand)
    return out


def evaluate(
    model_name: str,
    trace_name: str,
    hours: float | None,
    *,
    instances: float,
    settings: SimSettings,
    planner: PlannerConfig,
    surge: bool = False,
    figures: Path | None = None,
) -> RunResult:
    """Scale the trace, pick the forecaster, run every policy (and the on-demand oracle) and
    collect what the page needs; with `figures`, write the run's plots there as `{tag}-*.png`."""
    catalog = load_catalog()
    entry = catalog.model(model_name)
    model = entry.to_model()
    trace = _scaled(trace_name, hours, model_name, instances)
    scores = _backtest(trace, planner)
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
    )
    runs: list[PolicyRun] = simulate(scenario, POLICIES)
    (od_oracle,) = simulate(replace(scenario, market="ondemand"), ["oracle"])
    od_oracle.name = "oracle-ondemand"
    runs.append(od_oracle)
    rows = {r.name: policy_summary(r, entry.slo) for r in runs}
    reactive, queue = build_policies(scenario, ["reactive", "queue"])
    assert isinstance(reactive, ReactivePolicy) and isinstance(queue, QueuePolicy)
    tag = f"{model_name}-{trace_name}"
    if figures is not None:
        figures.mkdir(parents=True, exist_ok=True)
        write_plots(runs, entry.slo, figures)
        for png in PLOTS:
            (figures / f"{png}.png").rename(figures / f"{tag}-{png}.png")
    return RunResult(
        model=model_name,
        trace=trace_name,
        hours=hours,
        surge=surge,
        slo=entry.slo,
        requests=int(trace.counts.sum()),
        backtest=scores,
        rows=rows,
        reactive_type=reactive.instance_type,
        reactive_overprovision=1.0 / reactive.safety_factor,
        queue_max_replicas=queue.max_replicas,
        queue_downscale_delay_s=queue.downscale_delay_s,
        queue_launch_overhead_s=catalog.instance_type(queue.instance_type).launch_overhead_s,
        cpu_premium=_cpu_premium(model, catalog, CapacityCache()),
        spot_discount_pct=_spot_discount_pct(catalog, rows["mark-spot"]["instance_hours"]),
    )


# ---------------------------------------------------------------------------------------------
# Writing: the page as a function of the results


def _attained(share: float) -> str:
    """A share as a percentage with two decimals, more where two would round a miss up to
    100.00% (a run that attained 99.998% must not read as a perfect one)."""
    digits = 2
    while share < 1.0 and f"{share:.{digits}%}" == f"{1.0:.{digits}%}" and digits < 6:
        digits += 1
    return f"{share:.{digits}%}"


def _span(values: Iterable[float], fmt: str, unit: str = "") -> str:
    """`lo-hi` of the values as formatted, one figure where they format the same."""
    ordered = sorted(values)
    lo, hi = format(ordered[0], fmt), format(ordered[-1], fmt)
    return f"{lo}{unit}" if lo == hi else f"{lo}-{hi}{unit}"


def _of(count: int, total: int) -> str:
    return f"{count} of {total}"


def _table(rows: Mapping[str, Mapping[str, Any]], slo: Slo) -> list[str]:
    ref = rows["reactive"]["cost_usd"]
    out = [
        "| policy | cost $ | reactive / policy | SLO attained | p99 ms | spilled | failed |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        mark = "" if r["slo_attainment"] >= slo.percentile else " (misses SLO)"
        p99 = "-" if r["p99_ms"] is None else f"{r['p99_ms']:.0f}"
        out.append(
            f"| {name} | {r['cost_usd']:.2f} | {ref / r['cost_usd']:.2f}x | "
            f"{_attained(r['slo_attainment'])}{mark} | {p99} | {r['spilled']} | {r['failed']} |"
        )
    return out


def claims(rows: Mapping[str, Mapping[str, Any]], slo: Slo) -> list[Claim]:
    """The four claims checked on every run, each worded with the figures it was judged on."""
    od, spot, sky = rows["mark-ondemand"], rows["mark-spot"], rows["skyserve"]
    oracle = rows["oracle-ondemand"]
    ratio = od["cost_usd"] / oracle["cost_usd"]
    return [
        Claim(
            f"MArk-ondemand meets the SLO ({_attained(od['slo_attainment'])} within "
            f"{slo.latency_ms:g} ms, {slo.percentile:.0%} asked)",
            od["slo_attainment"] >= slo.percentile,
        ),
        Claim(
            f"MArk-ondemand within {ORACLE_SLACK - 1:.0%} of the on-demand oracle ({ratio:.2f}x)",
            od["cost_usd"] <= ORACLE_SLACK * oracle["cost_usd"],
        ),
        Claim(
            f"MArk-spot cheaper than MArk-ondemand (${spot['cost_usd']:.2f} against "
            f"${od['cost_usd']:.2f})",
            spot["cost_usd"] < od["cost_usd"],
        ),
        Claim(
            "MArk-spot cheaper than skyserve at SLO attainment at least as high "
            f"(${spot['cost_usd']:.2f} at {_attained(spot['slo_attainment'])} against "
            f"${sky['cost_usd']:.2f} at {_attained(sky['slo_attainment'])})",
            spot["cost_usd"] < sky["cost_usd"] and spot["slo_attainment"] >= sky["slo_attainment"],
        ),
    ]


def _run_section(result: RunResult) -> list[str]:
    checked = [c.line() for c in claims(result.rows, result.slo)]
    table = _table(result.rows, result.slo)
    if result.surge:
        return [
            f"## Unexpected load: {result.trace} ({result.model}, first {result.hours:g} h)",
            "",
            f"Forecaster: `{result.predictor}` (pinball loss {result.pinball_pct:.2f}%).",
            "",
            *table,
            "",
            *checked,
            "",
        ]
    first = f" (first {result.hours:g} h)" if result.hours else ""
    return [
        f"## {result.model} on {result.trace}{first}",
        "",
        f"SLO {result.slo.percentile:.0%} within {result.slo.latency_ms:g} ms; "
        f"{result.requests:,} requests. Forecaster: `{result.predictor}` (pinball loss "
        f"{result.pinball_pct:.2f}% of the mean rate, the lowest of the backtest).",
        "",
        *table,
        "",
        *checked,
        "",
        f"![cost](evaluation/{result.tag}-cost.png) "
        f"![latency](evaluation/{result.tag}-latency_ccdf.png)",
        "",
    ]


def _header(setup: Setup, results: list[RunResult]) -> list[str]:
    notice_min = setup.settings.interruption_notice_s / 60.0
    overprovision = _span((r.reactive_overprovision for r in results), "g", "x")
    return [
        "# Evaluation: Mark against the baselines and the oracle",
        "",
        "Generated by `bench/evaluation.py` (do not edit by hand). Command:",
        "",
        f"    {setup.command}",
        "",
        "Policies (docstrings in `mark/apps/simulator/policies/`): "
        "`mark-ondemand`, `mark-spot` (the "
        "live planner, forecaster, batching and spill rule), `reactive` (SageMaker target "
        f"tracking, {overprovision} over-provisioning, ml.* prices), `queue` (Ray Serve "
        "defaults), `skyserve` (SpotHedge), `static` (peak-provisioned), `oracle` (MILP lower "
        "bound, spot allowed) and `oracle-ondemand` (the same, on-demand only). Spot "
        f"interruptions: {setup.settings.interruption_rate_per_hour:g} per instance-hour with a "
        f"{notice_min:g}-minute notice. Each trace is scaled so its peak needs "
        f"{setup.instances:g} instances of the model's most cost-efficient c5 type at the SLO.",
        "",
    ]


def _savings(setup: Setup, paper: list[RunResult]) -> list[str]:
    """The Table 5 comparison and why ours differ, in this run's figures."""
    table = []
    od_savings, spot_savings, spot_less_pct = [], [], []
    for r in paper:
        ref = r.rows["reactive"]["cost_usd"]
        od, spot = r.rows["mark-ondemand"]["cost_usd"], r.rows["mark-spot"]["cost_usd"]
        od_savings.append(ref / od)
        spot_savings.append(ref / spot)
        spot_less_pct.append(100.0 * (1.0 - spot / od))
        paper_od, paper_spot = PAPER_RATIO[r.model]
        table.append(
            f"| {r.model} | {r.trace} | {ref / od:.2f}x (paper {paper_od}x) | "
            f"{ref / spot:.2f}x (paper {paper_spot}x) |"
        )
    models = sorted({r.model for r in paper}, key=list(PAPER_RATIO).index)
    reactive_types = {m: sorted({r.reactive_type for r in paper if r.model == m}) for m in models}
    chosen = "; ".join(f"{m} {', '.join(f'`{t}`' for t in ts)}" for m, ts in reactive_types.items())
    new = sorted(
        {t for ts in reactive_types.values() for t in ts if t.split(".")[0] not in PAPER_FAMILIES}
    )
    new_text = (
        f" (the paper's fleet had {', '.join(PAPER_FAMILIES)} only, not "
        f"{', '.join(f'`{t}`' for t in new)})"
        if new
        else ""
    )
    discounts: dict[str, float] = {}
    for r in paper:
        discounts.update(r.spot_discount_pct)
    discount_text = (
        f", against the catalog's spot discounts of {_span(discounts.values(), '.0f', '%')} "
        f"(mean over its sample) on the types it ran ({', '.join(sorted(discounts))})"
        if discounts
        else ""
    )
    planner = setup.planner
    return [
        "## Savings against SageMaker (reactive), ours vs the paper's Table 5",
        "",
        "| model | trace | MArk-ondemand | MArk-spot |",
        "|---|---|---:|---:|",
        *table,
        "",
        f"Here `reactive` costs {_span(od_savings, '.2f', 'x')} as much as MArk-ondemand and "
        f"{_span(spot_savings, '.2f', 'x')} as much as MArk-spot; the paper's Table 5 gives "
        f"{_span((PAPER_RATIO[m][0] for m in models), '.2f', 'x')} and "
        f"{_span((PAPER_RATIO[m][1] for m in models), '.2f', 'x')} for the same models. The "
        "paper's SageMaker ran CPU (c5) endpoints while MArk mixed in GPUs and batched; here "
        "`reactive` runs the one type with the lowest SageMaker price per unit of capacity at "
        f"the SLO in our catalog: {chosen}{new_text}. MArk-spot costs "
        f"{_span(spot_less_pct, '.0f', '%')} less than MArk-ondemand{discount_text}. The "
        "planner hedges spot: where one instance carries more than a pool's share of a model "
        f"(spot_max_share {planner.spot_max_share:g} over spot_min_pools "
        f"{planner.spot_min_pools}), it buys spot in a second pool so that losing either pool "
        "leaves the demand covered (`provisioner/policy/planner_greedy.py`).",
        "",
    ]


def _by_trace(results: list[RunResult]) -> dict[str, list[RunResult]]:
    out: dict[str, list[RunResult]] = defaultdict(list)
    for r in results:
        out[r.trace].append(r)
    return dict(out)


def _oracle_and_queue(setup: Setup, results: list[RunResult]) -> list[str]:
    """How MArk-ondemand stands against the on-demand oracle, what the planner does about
    bursts, and how `queue` fared: every figure from the runs."""

    def od_ratio(r: RunResult) -> float:
        return r.rows["mark-ondemand"]["cost_usd"] / r.rows["oracle-ondemand"]["cost_usd"]

    per_trace = "; ".join(
        f"{trace} {_span(map(od_ratio, runs), '.2f', 'x')}"
        for trace, runs in _by_trace(results).items()
    )
    within = sum(od_ratio(r) <= ORACLE_SLACK for r in results)
    premiums = [r.cpu_premium for r in results if r.cpu_premium is not None]
    if setup.planner.tail_after_lead:
        tail = (
            "; and until the model's most cost-efficient type could be ready the planner "
            "covers the mean forecast, not its upper band (`planner.tail_after_lead`), so a "
            "near-term tail is left to queueing and spill instead of stopgaps"
        )
        if premiums:
            tail += (
                f": the cheapest CPU type costs {_span(premiums, '.1f', 'x')} more per request "
                "at the SLO than the model's most cost-efficient type (catalog prices, "
                "`provisioner.policy.capacity`)"
            )
    else:
        tail = "; `planner.tail_after_lead` is off in this run, so it covers the upper band"
    queue_missed = sum(not r.rows["queue"]["slo_met"] for r in results)
    queue_ratio = [
        r.rows["queue"]["cost_usd"] / r.rows["oracle-ondemand"]["cost_usd"] for r in results
    ]
    return [
        f"MArk-ondemand against the on-demand oracle: {per_trace}; within {ORACLE_SLACK:g}x on "
        f"{_of(within, len(results))} runs. On bursty traffic the forecaster's upper band is "
        "calibrated per level (`predictors/base.py`), so a forecast made in the busy state is "
        f"not widened by the jumps seen from the quiet one{tail}. "
        "`queue` is Ray Serve with its defaults (downscale delay "
        f"{_span((r.queue_downscale_delay_s for r in results), 'g', ' s')}) and max_replicas "
        "set from the trace's peak need "
        f"({_span((r.queue_max_replicas for r in results), 'd')} here; Ray's own default is 1). "
        "With replicas that take "
        f"{_span((r.queue_launch_overhead_s for r in results), 'g', ' s')} to start, requests "
        "queued meanwhile count as ongoing: it cost "
        f"{_span(queue_ratio, '.2f', 'x')} the on-demand oracle and missed the SLO on "
        f"{_of(queue_missed, len(results))} runs.",
        "",
    ]


def _forecasters(results: list[RunResult]) -> list[str]:
    picks = []
    for trace, runs in _by_trace(results).items():
        chosen = Counter(r.predictor for r in runs)
        parts = []
        for name, count in chosen.most_common():
            mine = [r for r in runs if r.predictor == name and len(r.backtest) > 1]
            runner_up = sorted({r.backtest[1][0] for r in mine})
            margins = [r.backtest[1][1] - r.pinball_pct for r in mine]
            behind = (
                f" (runner-up {'/'.join(f'`{n}`' for n in runner_up)}, "
                f"{_span(margins, '.2g')} points behind)"
                if mine
                else ""
            )
            parts.append(f"`{name}` on {_of(count, len(runs))} runs{behind}")
        picks.append(f"on {trace} {', '.join(parts)}")
    return [
        "The forecaster of each run is picked as an operator would pick it before going live "
        "(README, 'Forecaster backtests'): every registered forecaster is backtested on the "
        "trace at the planner's horizon and the one with the lowest pinball loss of the upper "
        f"quantile is used. Picked here: {'; '.join(picks)}.",
        "",
    ]


def render_page(setup: Setup, results: list[RunResult]) -> str:
    """The whole of docs/evaluation.md from the run's results: a summary, then one section per
    run in the order given (the paper's experiments, then the surges)."""
    paper = [r for r in results if not r.surge]
    checked = [(r, c) for r in results for c in claims(r.rows, r.slo)]
    held = sum(c.holds for _, c in checked)
    failing = [f"{r.tag}: {c.text}" for r, c in checked if not c.holds]
    omitted = [m for m in PAPER_RATIO if m not in setup.models]
    lines = [
        *_header(setup, results),
        *(_savings(setup, paper) if paper else []),
        *_oracle_and_queue(setup, results),
        *_forecasters(results),
        f"Claims: {held} of {len(checked)} hold. A claim marked **does not hold** is reported "
        "as measured, not tuned away" + (f"; here: {'; '.join(failing)}." if failing else "."),
        "",
        *([f"Not in this run: {', '.join(omitted)}.", ""] if omitted else []),
        f"Total runtime: {setup.runtime_s:.0f} s.",
        "",
    ]
    for r in results:
        lines += _run_section(r)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hours", type=float, default=8.0)
    parser.add_argument("--models", default=",".join(PAPER_RATIO))
    parser.add_argument("--instances", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        type=Path,
        default=DOCS,
        help="folder for evaluation.md and evaluation/*.png (default: the repository's docs/)",
    )
    args = parser.parse_args()
    models = tuple(args.models.split(","))
    figures = args.out / "evaluation"
    settings = SimSettings(seed=args.seed, interruption_rate_per_hour=INTERRUPTION_RATE_PER_HOUR)
    planner = PlannerConfig()
    started = time.perf_counter()
    command = (
        f".venv/bin/python bench/evaluation.py --hours {args.hours:g} --models {args.models} "
        f"--instances {args.instances:g} --seed {args.seed}"
    )
    if args.out.resolve() != DOCS:
        command += f" --out {args.out}"
    results: list[RunResult] = []
    for model_name in models:
        for trace_name, hours in ((DIURNAL, args.hours), (MMPP, None)):
            results.append(
                evaluate(
                    model_name,
                    trace_name,
                    hours,
                    instances=args.instances,
                    settings=settings,
                    planner=planner,
                    figures=figures,
                )
            )
            print(f"{results[-1].tag}: done at {time.perf_counter() - started:.0f} s", flush=True)
    for surge in SURGES:
        results.append(
            evaluate(
                SURGE_MODEL,
                surge,
                args.hours,
                instances=args.instances,
                settings=settings,
                planner=planner,
                surge=True,
            )
        )
        print(f"{surge}: done at {time.perf_counter() - started:.0f} s", flush=True)
    setup = Setup(
        command=command,
        instances=args.instances,
        settings=settings,
        planner=planner,
        models=models,
        runtime_s=time.perf_counter() - started,
    )
    doc = args.out / "evaluation.md"
    doc.write_text(render_page(setup, results), encoding="utf-8")
    print(f"wrote {doc}")


if __name__ == "__main__":
    main()
