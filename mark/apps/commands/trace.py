"""`mark trace gen KIND --out FILE [options]`: write a generated workload trace (traces/)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = ["register"]

# kind -> (generator name in traces.generators, help, [(flag, type, default, help)])
_Option = tuple[str, type, Any, str]
_COMMON: list[_Option] = [
    ("--bucket-s", float, 60.0, "bucket width in seconds"),
    ("--seed", int, 0, "random seed (the same seed gives the same trace)"),
    ("--start-s", float, None, "timestamp of the first bucket"),
]
_DIURNAL: list[_Option] = [
    ("--days", float, 2.0, "length in days"),
    ("--peak-rps", float, 150.0, "peak request rate"),
    ("--peak-to-valley", float, 4.0, "peak rate / valley rate"),
    ("--noise", float, 0.08, "log-scale standard deviation of minute-scale bursts"),
    ("--noise-corr-s", float, 600.0, "how long a burst lasts"),
    ("--day-variation", float, 0.05, "relative day-to-day variation"),
]
_KINDS: dict[str, tuple[str, str, list[_Option]]] = {
    "diurnal": ("diurnal", "Twitter-like daily wave with bursts", _DIURNAL),
    "mmpp": (
        "mmpp",
        "Markov-modulated Poisson process (bursty, unpredictable)",
        [
            ("--hours", float, 4.0, "length in hours"),
            ("--rates-rps", str, "40,100,180", "comma-separated rates of the hidden states"),
            ("--mean-sojourn-s", float, 600.0, "mean time in a state"),
        ],
    ),
    "surge": (
        "surge",
        "diurnal load with an unexpected surge",
        [
            ("--surge-fraction", float, 0.75, "rate increase during the surge (0.75 = +75%%)"),
            ("--surge-start-s", float, 144_000.0, "when the surge starts"),
            ("--surge-duration-s", float, 3600.0, "how long it holds"),
            ("--ramp-s", float, 120.0, "rise and fall time"),
            *_DIURNAL,
        ],
    ),
    "zipf": (
        "zipf_models",
        "many models with Zipf popularity (model column)",
        [
            ("--n-models", int, 50, "number of models"),
            ("--exponent", float, 1.1, "Zipf exponent"),
            ("--hours", float, 4.0, "length in hours"),
            ("--total-peak-rps", float, 150.0, "peak of the total rate"),
            ("--peak-to-valley", float, 4.0, "peak / valley of the total"),
            ("--noise", float, 0.15, "per-model burst size (log-scale standard deviation)"),
            ("--drift", float, 0.0, "popularity drift over the day (log-scale; 0: none)"),
        ],
    ),
    "azure": (
        "azure_functions",
        "functions calibrated to the Azure Functions 2019 trace statistics (model column)",
        [
            ("--n-functions", int, 2000, "population size drawn"),
            ("--keep", int, 20, "busiest functions kept as models"),
            ("--days", float, 2.0, "length in days"),
            ("--scale-to-peak-rps", float, 150.0, "rescale the total to peak here (0: don't)"),
        ],
    ),
}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "trace", help="generate workload traces", description="Workload traces (traces/)."
    )
    actions = parser.add_subparsers(dest="trace_action", required=True, metavar="ACTION")
    gen = actions.add_parser("gen", help="write a generated trace as CSV")
    kinds = gen.add_subparsers(dest="kind", required=True, metavar="KIND")
    for kind, (function, summary, options) in _KINDS.items():
        sub = kinds.add_parser(kind, help=summary, description=summary)
        sub.add_argument("--out", required=True, help="CSV file to write")
        for flag, kind_type, default, text in [*options, *_COMMON]:
            sub.add_argument(flag, type=kind_type, default=default, help=text)
        sub.set_defaults(func=_generate(function, [o[0] for o in [*options, *_COMMON]]))


def _generate(function: str, flags: list[str]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from mark.core.errors import InvalidValue
        from traces import generators, write_trace

        kwargs: dict[str, Any] = {}
        for flag in flags:
            key = flag.lstrip("-").replace("-", "_")
            value = getattr(args, key)
            if value is None:
                continue
            if key == "rates_rps":
                try:
                    value = tuple(float(v) for v in value.split(","))
                except ValueError:
                    raise InvalidValue("--rates-rps", f"not a list of numbers: {value!r}") from None
            if key == "scale_to_peak_rps" and value == 0:
                value = None
            kwargs[key] = value
        trace = getattr(generators, function)(**kwargs)
        write_trace(args.out, trace)
        total = trace.total()
        print(
            f"wrote {args.out}: {total.counts.size} buckets of {trace.bucket_s:g} s, "
            f"{len(trace.model_names) or 1} model(s), peak {total.rates_rps.max():.1f} req/s, "
            f"mean {total.rates_rps.mean():.1f} req/s"
        )
        return 0

    return run
