"""`mark forecast-eval --trace FILE --predictors a,b,c --horizon 5m [--out DIR]`: backtest
forecasters on a trace (predictors/backtest.py) and print a table; `--out` adds JSON and a plot."""

from __future__ import annotations

import argparse
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from predictors.backtest import BacktestResult
    from traces import Trace

__all__ = ["register", "parse_duration_s"]

_UNITS_S = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d)?\s*$")


def parse_duration_s(text: str) -> float:
    """'300', '300s', '5m', '1.5h', '2d' -> seconds."""
    from mark.core.errors import InvalidValue

    match = _DURATION.match(text)
    if not match:
        raise InvalidValue("duration", f"{text!r} is not a duration like 300s, 5m, 1h or 2d")
    return float(match.group(1)) * _UNITS_S[match.group(2) or "s"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "forecast-eval",
        help="backtest load forecasters on a trace",
        description="Replay a trace through forecasters as the control loop would and score "
        "their forecasts: MAPE, under-forecast rate against the upper quantile, over-forecast, "
        "pinball loss, time per bucket.",
    )
    parser.add_argument("--trace", required=True, help="trace CSV, or the name of a shipped one")
    parser.add_argument(
        "--predictors", default=None, help="comma-separated forecaster names (default: all)"
    )
    parser.add_argument("--horizon", default="5m", help="forecast horizon (default 5m)")
    parser.add_argument("--quantile", type=float, default=0.95, help="upper quantile")
    parser.add_argument(
        "--warmup", default="1h", help="history before the first scored forecast (default 1h)"
    )
    parser.add_argument(
        "--model",
        default=None,
        help="for a many-model trace: one model (default: the total of all models)",
    )
    parser.add_argument("--out", default=None, help="directory for forecast_eval.json and .png")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskID,
        TimeRemainingColumn,
    )

    from mark.core.errors import InvalidValue
    from predictors import available_forecasters
    from predictors.backtest import backtest, best_forecaster
    from traces import read_trace, shipped_trace

    path = Path(args.trace)
    trace = read_trace(path if path.exists() else shipped_trace(args.trace))
    series = (
        trace.total() if args.model is None or trace.models is None else trace.for_model(args.model)
    )
    names = (
        [n.strip() for n in args.predictors.split(",") if n.strip()]
        if args.predictors
        else available_forecasters()
    )
    if not names:
        raise InvalidValue("--predictors", "name at least one forecaster")
    horizon = _buckets("--horizon", parse_duration_s(args.horizon), series.bucket_s)
    warmup = _buckets("--warmup", parse_duration_s(args.warmup), series.bucket_s)
    console = Console()
    results: list[BacktestResult] = []
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        for name in names:
            task = progress.add_task(name, total=series.counts.size)

            def advance(done: int, task: TaskID = task) -> None:
                progress.update(task, completed=done)

            results.append(
                backtest(
                    series,
                    name,
                    horizon_buckets=horizon,
                    quantile=args.quantile,
                    warmup_buckets=warmup,
                    progress=advance,
                )
            )
    best = best_forecaster(results)
    console.print(_table(results, best, series, args, horizon))
    console.print(
        f"best by pinball loss of the q={args.quantile:g} quantile: [bold]{best.predictor}"
    )
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "forecast_eval.json", results, best, series, args, horizon)
        _plot(out / "forecast_eval.png", results, series, args)
        console.print(f"wrote {out / 'forecast_eval.json'} and {out / 'forecast_eval.png'}")
    return 0


def _buckets(flag: str, seconds: float, bucket_s: float) -> int:
    from mark.core.errors import InvalidValue

    buckets = round(seconds / bucket_s)
    if buckets < 1 or abs(buckets * bucket_s - seconds) > 1e-6 * bucket_s:
        raise InvalidValue(flag, f"{seconds:g} s is not a whole number of {bucket_s:g} s buckets")
    return buckets


def _table(
    results: list[BacktestResult],
    best: BacktestResult,
    series: Trace,
    args: argparse.Namespace,
    horizon: int,
) -> object:
    from rich.table import Table

    table = Table(
        title=f"{Path(args.trace).name}: {series.counts.size} buckets of {series.bucket_s:g} s, "
        f"horizon {horizon} buckets, q = {args.quantile:g}",
        caption="under %: forecasts exceeded by the actual rate (nominal "
        f"{100 * (1 - args.quantile):g}%); over %: spare capacity bought / demand",
    )
    for column in ("predictor", "MAPE %", "under %", "over %", "pinball %", "ms/bucket"):
        table.add_column(column, justify="left" if column == "predictor" else "right")
    for r in results:
        table.add_row(
            f"[bold]{r.predictor}[/bold]" if r is best else r.predictor,
            f"{r.mape_pct:.1f}",
            f"{100 * r.under_rate:.1f}",
            f"{r.over_pct:.1f}",
            f"{r.pinball_pct:.2f}",
            f"{r.ms_per_bucket:.3f}",
        )
    return table


def _write_json(
    path: Path,
    results: list[BacktestResult],
    best: BacktestResult,
    series: Trace,
    args: argparse.Namespace,
    horizon: int,
) -> None:
    document = {
        "trace": str(args.trace),
        "model": args.model,
        "buckets": int(series.counts.size),
        "bucket_s": series.bucket_s,
        "horizon_buckets": horizon,
        "quantile": args.quantile,
        "warmup": args.warmup,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "best": best.predictor,
        "results": [r.summary() for r in results],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


def _plot(
    path: Path, results: list[BacktestResult], series: Trace, args: argparse.Namespace
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(results), 1, figsize=(12, 2.6 * len(results)), sharex=True, squeeze=False
    )
    hours = series.timestamps_s / 3600.0
    for ax, r in zip(axes[:, 0], results, strict=True):
        ax.plot(hours, series.rates_rps, color="0.6", lw=0.7, label="actual")
        ax.plot(r.times_s / 3600.0, r.mean_rps, color="C0", lw=0.9, label="forecast (mean)")
        ax.fill_between(
            r.times_s / 3600.0,
            r.mean_rps,
            r.upper_rps,
            color="C0",
            alpha=0.25,
            label=f"up to q={r.quantile:g}",
        )
        ax.set_ylabel("req/s")
        ax.set_title(
            f"{r.predictor}: MAPE {r.mape_pct:.1f}%, under {100 * r.under_rate:.1f}%, "
            f"over {r.over_pct:.1f}% (forecasts {r.horizon_buckets} buckets ahead)",
            fontsize=9,
        )
        ax.legend(loc="upper left", fontsize=7)
    axes[-1, 0].set_xlabel("hours")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
