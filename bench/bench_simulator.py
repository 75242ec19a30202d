"""Simulated requests per second of `mark simulate`'s engine (issue 8 target: a 24-hour trace of
10 million requests in under 60 s per policy on one core), against a reference commit measured in
the same run (the machines are shared and noisy: only a same-run ratio means anything).

    .venv/bin/python bench/bench_simulator.py [--hours 24] [--policies mark,reactive] \
        [--against HEAD~1] [--rounds 2]

Replays the first `--hours` of the shipped diurnal trace, scaled so that 24 hours hold 10
million requests, against each policy, and prints requests, wall seconds and simulated requests
per second, with the projected time for 10 M requests. With `--against REV`, the same
measurement runs on REV's code (a temporary `git worktree`, this script's measuring code,
REV's simulator) in alternating rounds, and the median time ratio per policy is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def measure(hours: float, policy: str, model: str) -> tuple[int, float]:
    """(requests, wall seconds) of one policy's run, with whatever `mark` is on the path."""
    from mark.apps.simulator.runner import Scenario, simulate
    from mark.core.catalog import load_catalog
    from traces import Trace, read_trace, shipped_trace

    full = read_trace(shipped_trace("twitter-like-diurnal-2d"))
    day = int(24 * 3600 / full.bucket_s)
    scale = 10e6 / float(full.counts[:day].sum())
    n = int(hours * 3600 / full.bucket_s)
    trace = Trace(full.timestamps_s[:n], np.rint(full.counts[:n] * scale), full.bucket_s)
    catalog = load_catalog()
    entry = catalog.model(model)
    scenario = Scenario(
        model=entry.to_model(),
        trace=trace,
        catalog=catalog,
        market="ondemand",
        serverless_latency_ms=entry.serverless_latency_ms,
    )
    start = time.perf_counter()
    (run, *_) = simulate(scenario, [policy])
    return run.requests, time.perf_counter() - start


def _measure_at(tree: Path, hours: float, policy: str, model: str) -> tuple[int, float]:
    """`measure` in a fresh process whose `mark` is the code in `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    args = ["--one", policy, "--hours", str(hours), "--model", model]
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *args],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    )
    requests, wall = json.loads(out.stdout.strip().splitlines()[-1])
    return int(requests), float(wall)


def _line(label: str, requests: int, wall: float) -> str:
    rate = requests / wall
    return (
        f"{label:24s} {requests:>11,} requests {wall:7.1f} s "
        f"{rate:>12,.0f} simulated req/s  -> 10 M requests in {10e6 / rate:5.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--policies", default="mark,reactive,queue,skyserve,static,oracle")
    parser.add_argument("--model", default="inception-v3")
    parser.add_argument("--against", help="a git revision to measure in the same run")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child run: print JSON, exit
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.hours, args.one, args.model)))
        return
    policies = args.policies.split(",")
    if not args.against:
        for name in policies:
            requests, wall = _measure_at(ROOT, args.hours, name, args.model)
            print(_line(name, requests, wall))
        return
    with tempfile.TemporaryDirectory(prefix="mark-bench-") as tmp:
        ref = Path(tmp) / "ref"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(ref), args.against],
            check=True,
            capture_output=True,
        )
        try:
            for name in policies:
                ratios = []
                for _ in range(args.rounds):
                    requests, now = _measure_at(ROOT, args.hours, name, args.model)
                    _, then = _measure_at(ref, args.hours, name, args.model)
                    ratios.append(now / then)
                    print(_line(f"{name} (this tree)", requests, now))
                    print(_line(f"{name} ({args.against})", requests, then))
                print(f"{name}: time ratio this/{args.against} {statistics.median(ratios):.2f}")
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(ref)],
                check=True,
                capture_output=True,
            )


if __name__ == "__main__":
    main()
