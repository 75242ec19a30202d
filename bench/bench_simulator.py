"""Simulated requests per second of `mark simulate`'s engine (issue 8 target: a 24-hour trace of
10 million requests in under 60 s per policy on one core).

    .venv/bin/python bench/bench_simulator.py [--hours 24] [--policies mark,reactive]

Replays the first `--hours` of the shipped diurnal trace, scaled so that 24 hours hold 10
million requests, against each policy, and prints requests, wall seconds and simulated requests
per second, with the projected time for 10 M requests.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from mark.apps.simulator.runner import Scenario, simulate
from mark.core.catalog import load_catalog
from traces import Trace, read_trace, shipped_trace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--policies", default="mark,reactive,queue,skyserve,static,oracle")
    parser.add_argument("--model", default="inception-v3")
    args = parser.parse_args()
    full = read_trace(shipped_trace("twitter-like-diurnal-2d"))
    day = int(24 * 3600 / full.bucket_s)
    scale = 10e6 / float(full.counts[:day].sum())
    n = int(args.hours * 3600 / full.bucket_s)
    trace = Trace(full.timestamps_s[:n], np.rint(full.counts[:n] * scale), full.bucket_s)
    entry = load_catalog().model(args.model)
    scenario = Scenario(
        model=entry.to_model(),
        trace=trace,
        catalog=load_catalog(),
        market="ondemand",
        serverless_latency_ms=entry.serverless_latency_ms,
    )
    print(f"{int(trace.counts.sum()):,} requests over {args.hours:g} h, model {args.model}")
    for name in args.policies.split(","):
        start = time.perf_counter()
        (run, *_) = simulate(scenario, [name])
        wall = time.perf_counter() - start
        rate = run.requests / wall
        print(
            f"{run.name:14s} {run.requests:>11,} requests {wall:7.1f} s "
            f"{rate:>12,.0f} simulated req/s  -> 10 M requests in {10e6 / rate:5.1f} s"
        )


if __name__ == "__main__":
    main()
