"""Update + forecast time per bucket for each forecaster, over a week of 1-minute buckets.

The control loop calls observe() and forecast() once per tick for every model (up to a thousand),
so the issue's budget is per model and bucket: under 5 ms for the simple forecasters and under
50 ms amortised for the statsmodels ones (which refit on a schedule). Times are wall clock in this
process and printed as ratios to `last`, measured in the same run, since absolute figures depend on
the machine and its load.

    python bench/bench_predictors.py [--days 7] [--horizon 5] [--forecasters a,b]
"""

from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.table import Table

from predictors import available_forecasters, create_forecaster
from traces.generators import diurnal

SIMPLE = {"last", "moving-max", "ewma"}
BUDGET_MS = {"simple": 5.0, "refitting": 50.0}


def time_forecaster(name: str, times: list[float], counts: list[float], horizon: int) -> dict:
    forecaster = create_forecaster(name, bucket_s=60.0)
    worst_s = 0.0
    started = time.perf_counter()
    for t, c in zip(times, counts, strict=True):
        tick = time.perf_counter()
        forecaster.observe(t, c)
        forecaster.forecast(horizon)
        worst_s = max(worst_s, time.perf_counter() - tick)
    total_s = time.perf_counter() - started
    return {
        "name": name,
        "ms_per_bucket": 1000.0 * total_s / len(times),
        "worst_ms": 1000.0 * worst_s,
        "fits": getattr(forecaster, "fits", 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--horizon", type=int, default=5, help="forecast horizon in buckets")
    parser.add_argument("--forecasters", default=None, help="comma-separated (default: all)")
    args = parser.parse_args()
    names = args.forecasters.split(",") if args.forecasters else available_forecasters()
    if "last" not in names:
        names.insert(0, "last")
    trace = diurnal(days=args.days, seed=0)
    times, counts = trace.timestamps_s.tolist(), trace.counts.tolist()
    console = Console()
    console.print(
        f"{len(times)} buckets of 60 s (diurnal, {args.days:g} days), observe + forecast of "
        f"{args.horizon} buckets each"
    )
    rows = []
    for name in names:
        rows.append(time_forecaster(name, times, counts, args.horizon))
        console.print(f"  {name}: {rows[-1]['ms_per_bucket']:.3f} ms/bucket")
    reference = next(r for r in rows if r["name"] == "last")["ms_per_bucket"]
    table = Table(title="update + forecast per bucket (one model)")
    columns = (
        "forecaster",
        "ms/bucket",
        "x last",
        "worst tick ms",
        "fits",
        "budget ms",
        "ok",
        "1000 models s/tick",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "forecaster" else "right")
    for r in rows:
        budget = BUDGET_MS["simple" if r["name"] in SIMPLE else "refitting"]
        table.add_row(
            r["name"],
            f"{r['ms_per_bucket']:.3f}",
            f"{r['ms_per_bucket'] / reference:.1f}",
            f"{r['worst_ms']:.1f}",
            str(r["fits"]),
            f"{budget:g}",
            "yes" if r["ms_per_bucket"] < budget else "NO",
            f"{r['ms_per_bucket']:.2f}",  # ms per model = s per thousand models
        )
    console.print(table)


if __name__ == "__main__":
    main()
