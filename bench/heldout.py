"""Mark on traces the evaluation page does not report: the check a policy change is made on
before docs/evaluation.md is regenerated (choose on other data than the data you report on).

Each case draws a trace of the evaluation's kinds with a seed the page does not use (the
shipped traces are seeds 2 and 4, their held-out backtests seeds 102 and 104), cuts the window
as `bench/evaluation.py` does (MMPP: its first 4 h; the surge: day 2 15:00-19:00 around its
surge at 16:00, with the day before as history), scales it so that its peak needs `--instances`
of the type the planner buys, picks the forecaster on yet another seed (+50), and runs Mark in
the mixed market (mark-ondemand and mark-spot), printing cost and SLO attainment per run.

    .venv/bin/python bench/heldout.py [--models nasnet,inception-v3] [--seeds 7,8]
        [--kinds mmpp,surge] [--hours 4] [--instances 24]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.evaluation import (  # noqa: E402
    DAY_S,
    INTERRUPTION_RATE_PER_HOUR,
    SURGE_START_S,
    efficient_type,
    held_out_scores,
)
from mark.apps.simulator.engine import SimSettings  # noqa: E402
from mark.apps.simulator.report import policy_summary  # noqa: E402
from mark.apps.simulator.runner import Scenario, simulate  # noqa: E402
from mark.core.catalog import load_catalog  # noqa: E402
from mark.core.config import ForecastConfig, PlannerConfig  # noqa: E402
from provisioner.policy.capacity import CapacityCache  # noqa: E402
from traces import Trace, generators  # noqa: E402


def _cut(trace: Trace, start_s: float, end_s: float, scale: float) -> Trace:
    keep = (trace.timestamps_s >= start_s) & (trace.timestamps_s < end_s)
    return Trace(trace.timestamps_s[keep], np.rint(trace.counts[keep] * scale), trace.bucket_s)


def _drawn(kind: str, seed: int, hours: float) -> tuple[Trace, float, float]:
    """The drawn trace and the window (start, end) a run of `kind` replays."""
    if kind == "mmpp":
        full = generators.mmpp(hours=hours, seed=seed)
        start = float(full.timestamps_s[0])
        return full, start, start + hours * 3600.0
    full = generators.surge(surge_fraction=1.0, seed=seed)
    start = SURGE_START_S - hours * 3600.0 / 4.0
    return full, start, start + hours * 3600.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="nasnet,inception-v3")
    parser.add_argument("--seeds", default="7,8")
    parser.add_argument("--kinds", default="mmpp,surge")
    parser.add_argument("--hours", type=float, default=4.0)
    parser.add_argument("--instances", type=float, default=24.0)
    args = parser.parse_args()
    catalog, planner = load_catalog(), PlannerConfig()
    settings = SimSettings(seed=0, interruption_rate_per_hour=INTERRUPTION_RATE_PER_HOUR)
    print("| model | trace | forecaster | policy | cost $ | SLO attained | wall s |")
    print("|---|---|---|---|---:|---:|---:|")
    for model_name in args.models.split(","):
        entry = catalog.model(model_name)
        model = entry.to_model()
        cache = CapacityCache(budget_fraction=settings.batching.slo_budget_fraction)
        _, capacity = efficient_type(model, catalog, cache)
        for kind in args.kinds.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                full, start, end = _drawn(kind, seed, args.hours)
                window = _cut(full, start, end, 1.0)
                scale = args.instances * capacity / float(window.rates_rps.max())
                held, _, _ = _drawn(kind, seed + 50, args.hours)
                if kind == "surge":  # its day 2, surge included, as the evaluation's held-out
                    n = int(DAY_S / held.bucket_s)
                    held = Trace(held.timestamps_s[n:], held.counts[n:], held.bucket_s)
                predictor = held_out_scores(held, scale, planner)[0][0]
                scenario = Scenario(
                    market="mixed",
                    planner=planner,
                    forecast=ForecastConfig(predictor=predictor),
                    model=model,
                    trace=_cut(full, start, end, scale),
                    catalog=catalog,
                    settings=settings,
                    serverless_latency_ms=entry.serverless_latency_ms,
                    serverless_memory_mb=entry.serverless_memory_mb,
                    history=_cut(
                        full, max(float(full.timestamps_s[0]), start - DAY_S), start, scale
                    ),
                )
                started = time.perf_counter()
                for run in simulate(scenario, ["mark"]):
                    row = policy_summary(run, entry.slo)
                    print(
                        f"| {model_name} | {kind} seed {seed} | `{predictor}` | {run.name} | "
                        f"{run.cost_usd:.2f} | {100 * row['slo_attainment']:.2f}% | "
                        f"{time.perf_counter() - started:.0f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
