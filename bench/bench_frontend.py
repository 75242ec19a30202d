"""Front-end overhead and throughput: clients -> Mark -> workers, clients -> nginx -> workers and
clients -> worker directly, side by side in one run, against the same two `mark worker`s
(native speed, builtin:mlp).

wrk (closed loop, C connections) is the load generator, so Python is not the client bottleneck;
the offered load is set by the connection count. A second table paces the load below
saturation (`--paced`: 8 connections, each pausing after every answer so that together they
offer about that many requests per second), where the added latency target applies. Added
latency = target's p50/p99 minus the direct path's at the same load; throughput and p99 are
reported as ratios to nginx's. "CPU us/req" is the CPU time the Mark front end's processes used
per answered request (less sensitive to other load on a shared machine than the throughput).

    python bench/bench_frontend.py [--duration 10] [--connections 1,4,16] [--paced 250,1000]
                                   [--workers 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    cpu_s,
    machine,
    require_tools,
    start_front,
    start_nginx,
    start_worker,
    wrk,
)

PACED_CONNECTIONS = 8


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", default="1,4,16")
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
            upstreams = [("c5.large", w.url) for w in workers]
            front = start_front(model, upstreams, work, workers=args.workers)
            procs.append(front)
            fronts = [front, *front.others]
            path = "/v2/models/demo/infer"
            targets = {"direct": workers[0].url, "nginx": nginx.url, "mark": front.url}
            print(
                f"# bench_frontend: {machine()}; wrk {args.duration}s per point; "
                f"Mark {args.workers} worker process(es); load average "
                + " ".join(f"{x:.2f}" for x in os.getloadavg())
            )
            print(f"{'conns':>5} {'target':>7} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
                  f"{'+p50 ms':>8} {'+p99 ms':>8} {'rps/nginx':>9} {'p99/nginx':>9} "
                  f"{'CPU us/req':>10}")  # fmt: skip
            for conns in loads:
                got = {}
                for name, url in targets.items():
                    cpu_before_s = cpu_s(fronts)
                    got[name] = wrk(
                        url + path, connections=conns, duration_s=args.duration, slo_ms=100
                    )
                    cpu_req_us = (cpu_s(fronts) - cpu_before_s) / got[name]["requests"] * 1e6
                    got[name]["cpu_us"] = cpu_req_us if name == "mark" else None
                base = got["direct"]
                added = {
                    n: ((r["p50_us"] - base["p50_us"]) / 1e3, (r["p99_us"] - base["p99_us"]) / 1e3)
                    for n, r in got.items()
                }
                for name, r in got.items():
                    ratio_rps = r["rps"] / got["nginx"]["rps"]
                    # p99 ratio of whole latencies: the added parts can be <= 0 under noise
                    ratio_p99 = r["p99_us"] / got["nginx"]["p99_us"]
                    print(
                        f"{conns:>5} {name:>7} {r['rps']:>9.0f} {r['p50_us'] / 1e3:>7.2f} "
                        f"{r['p99_us'] / 1e3:>7.2f} {added[name][0]:>8.2f} {added[name][1]:>8.2f} "
                        f"{ratio_rps:>9.2f} {ratio_p99:>9.2f}"
                        + (f" {r['cpu_us']:>10.0f}" if r["cpu_us"] is not None else "")
                        + (f"  errors={r['errors']}" if r["errors"] else "")
                    )
            paced = [int(r) for r in args.paced.split(",") if r]
            if paced:
                print(f"\n# paced below saturation: {PACED_CONNECTIONS} connections")
                print(f"{'offered':>7} {'target':>7} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
                      f"{'+p50 ms':>8} {'+p99 ms':>8}")  # fmt: skip
            for rate in paced:
                pause_ms = max(1, round(PACED_CONNECTIONS * 1000 / rate))
                got = {
                    name: wrk(
                        url + path,
                        connections=PACED_CONNECTIONS,
                        duration_s=args.duration,
                        slo_ms=100,
                        delay_ms=pause_ms,
                    )  # fmt: skip
                    for name, url in targets.items()
                }
                base = got["direct"]
                for name, r in got.items():
                    print(
                        f"{rate:>7} {name:>7} {r['rps']:>9.0f} {r['p50_us'] / 1e3:>7.2f} "
                        f"{r['p99_us'] / 1e3:>7.2f} {(r['p50_us'] - base['p50_us']) / 1e3:>8.2f} "
                        f"{(r['p99_us'] - base['p99_us']) / 1e3:>8.2f}"
                    )
        finally:
            for p in reversed(procs):
                p.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
