"""Front-end overhead and throughput: clients -> Mark -> workers, clients -> nginx -> workers and
clients -> worker directly, side by side in one run, against the same two `mark worker`s
(native speed, builtin:mlp). A fourth target, `sanic`, is bench/sanic_proxy.py: a bare Sanic
process forwarding bodies through Mark's instance client, the floor of any Sanic front end, so
the table separates what Python and Sanic cost from what Mark's own work costs.

wrk (closed loop, C connections) is the load generator, so Python is not the client bottleneck;
the offered load is set by the connection count. A second table paces the load below
saturation (`--paced`: 8 connections, each pausing after every answer so that together they
offer about that many requests per second), where the added latency target applies. Added
latency = target's p50/p99 minus the direct path's at the same load; throughput and p99 are
reported as ratios to nginx's. "peak" is each target's throughput at saturation: the most
requests/s it answered at any connection count of the sweep, as a ratio to nginx's peak (a
closed loop at few connections is bound by each request's latency, not by what the proxy can
carry). "CPU us/req" is the CPU time the front end's processes (Mark's,
the bare Sanic proxy's) used per answered request (less sensitive to other load on a shared
machine than the throughput).

The targets are measured in interleaved rounds (direct, nginx, sanic, Mark, then again); a figure
is the median over rounds of that round's value, difference or ratio: on a shared VM whose speed
drifts by a third within minutes, one long run per target compared Mark and nginx at different
speeds (the same code measured 245 and 339 us of CPU per request ten minutes apart).

    python bench/bench_frontend.py [--duration 4] [--rounds 3] [--connections 1,4,16,64]
                                   [--paced 250,1000] [--workers 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from statistics import median
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    Proc,
    cpu_s,
    machine,
    require_tools,
    start_front,
    start_nginx,
    start_sanic_proxy,
    start_worker,
    wrk,
)

PACED_CONNECTIONS = 8


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=4, help="seconds per target and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", default="1,4,16,64")
    parser.add_argument("--paced", default="250,1000", help="offered req/s below saturation")
    parser.add_argument("--workers", type=int, default=1, help="front-end processes")
    args = parser.parse_args()
    require_tools()
    loads = [int(c) for c in args.connections.split(",")]
    model = {"name": "demo", "slo": {"latency_ms": 100, "percentile": 0.98}, "max_batch": 32}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        workers = [start_worker("--model", "demo=builtin:mlp") for _ in range(2)]
        procs = list(workers)
        try:
            nginx = start_nginx([w.url for w in workers], work)
            procs.append(nginx)
            floor = start_sanic_proxy([w.url for w in workers])
            procs.append(floor)
            upstreams = [("c5.large", w.url) for w in workers]
            front = start_front(model, upstreams, work, workers=args.workers)
            procs.append(front)
            cpu_of = {"sanic": [floor], "mark": [front, *front.others]}
            path = "/v2/models/demo/infer"
            targets = {
                "direct": workers[0].url,
                "nginx": nginx.url,
                "sanic": floor.url,
                "mark": front.url,
            }
            print(
                f"# bench_frontend: {machine()}; {args.rounds} interleaved rounds of wrk "
                f"{args.duration}s per target and point; Mark {args.workers} worker process(es); "
                "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
            )
            print(f"{'conns':>5} {'target':>7} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
                  f"{'+p50 ms':>8} {'+p99 ms':>8} {'rps/nginx':>9} {'p99/nginx':>9} "
                  f"{'CPU us/req':>10}")  # fmt: skip
            peak = dict.fromkeys(targets, 0.0)
            for conns in loads:
                run = partial(_load, path=path, connections=conns, duration_s=args.duration)
                got = _rounds(targets, args.rounds, cpu_of, run)
                for name, row in _summary(got).items():
                    peak[name] = max(peak[name], row["rps"])
                    cpu = got[name][0].get("cpu_us")
                    print(
                        f"{conns:>5} {name:>7} {row['rps']:>9.0f} {row['p50']:>7.2f} "
                        f"{row['p99']:>7.2f} {row['+p50']:>8.2f} {row['+p99']:>8.2f} "
                        f"{row['rps/nginx']:>9.2f} {row['p99/nginx']:>9.2f}"
                        + (f" {cpu:>10.0f}" if cpu is not None else "")
                        + (f"  errors={row['errors']}" if row["errors"] else "")
                    )
            if loads:
                print("\n# peak: the most req/s at any connection count above, and its ratio "
                      "to nginx's peak")  # fmt: skip
                for name, rps in peak.items():
                    print(f"{'peak':>5} {name:>7} {rps:>9.0f} {rps / peak['nginx']:>5.2f}")
            paced = [int(r) for r in args.paced.split(",") if r]
            if paced:
                print(f"\n# paced below saturation: {PACED_CONNECTIONS} connections")
                print(f"{'offered':>7} {'target':>7} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
                      f"{'+p50 ms':>8} {'+p99 ms':>8}")  # fmt: skip
            for rate in paced:
                pause_ms = max(1, round(PACED_CONNECTIONS * 1000 / rate))
                run = partial(
                    _load, path=path, connections=PACED_CONNECTIONS,
                    duration_s=args.duration, delay_ms=pause_ms,
                )  # fmt: skip
                got = _rounds(targets, args.rounds, cpu_of, run)
                for name, row in _summary(got).items():
                    print(
                        f"{rate:>7} {name:>7} {row['rps']:>9.0f} {row['p50']:>7.2f} "
                        f"{row['p99']:>7.2f} {row['+p50']:>8.2f} {row['+p99']:>8.2f}"
                    )
        finally:
            for p in reversed(procs):
                p.stop()
    return 0


Doc = dict[str, Any]


def _load(url: str, *, path: str, connections: int, duration_s: int, delay_ms: int = 0) -> Doc:
    return wrk(
        url + path, connections=connections, duration_s=duration_s, slo_ms=100, delay_ms=delay_ms
    )


def _rounds(
    targets: dict[str, str],
    rounds: int,
    cpu_of: dict[str, list[Proc]],
    run: Callable[[str], Doc],
) -> dict[str, list[Doc]]:
    """`run` against every target in turn, `rounds` times over: the targets of one round are
    measured within seconds of each other, so a slow spell of a shared machine falls on all of
    them (the ratios are taken per round). The targets in `cpu_of` carry the CPU their
    processes used per answered request over all rounds (`cpu_us`, on their first round)."""
    got: dict[str, list[Doc]] = {name: [] for name in targets}
    used_s = dict.fromkeys(cpu_of, 0.0)
    answered = dict.fromkeys(cpu_of, 0)
    for _ in range(rounds):
        for name, url in targets.items():
            procs = cpu_of.get(name, [])
            before_s = cpu_s(procs)
            got[name].append(run(url))
            if name in cpu_of:
                used_s[name] += cpu_s(procs) - before_s
                answered[name] += got[name][-1]["requests"]
    for name in cpu_of:
        if answered[name]:
            got[name][0]["cpu_us"] = used_s[name] / answered[name] * 1e6
    return got


def _summary(got: dict[str, list[Doc]]) -> dict[str, dict[str, float]]:
    """Per target, the median over rounds of its figures and of its per-round differences to
    the direct path and ratios to nginx."""
    out = {}
    for name, runs in got.items():
        pairs = list(zip(runs, got["direct"], got["nginx"], strict=True))
        out[name] = {
            "rps": median(r["rps"] for r in runs),
            "p50": median(r["p50_us"] for r in runs) / 1e3,
            "p99": median(r["p99_us"] for r in runs) / 1e3,
            "+p50": median(r["p50_us"] - d["p50_us"] for r, d, _ in pairs) / 1e3,
            "+p99": median(r["p99_us"] - d["p99_us"] for r, d, _ in pairs) / 1e3,
            "rps/nginx": median(r["rps"] / n["rps"] for r, _, n in pairs),
            # p99 ratio of whole latencies: the added parts can be <= 0 under noise
            "p99/nginx": median(r["p99_us"] / n["p99_us"] for r, _, n in pairs),
            "errors": sum(r["errors"] for r in runs),
        }
    return out


if __name__ == "__main__":
    sys.exit(main())
