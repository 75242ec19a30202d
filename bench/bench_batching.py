"""Goodput at the SLO for a batching-friendly model: Mark's SLO-aware dynamic batching versus
nginx round-robin of single requests, same workers, same offered loads (wrk connections).

The two workers are paced to a GPU-like profile, T(b) = 20 + 0.5*b ms (large fixed cost, small
per-request cost), and execute at most what one request carries (`--max-batch 1`), so only the
front end can batch. Goodput = requests/s answered within the SLO (150 ms).

    python bench/bench_batching.py [--duration 10] [--connections 4,16,64,128]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import machine, require_tools, start_front, start_nginx, start_worker, wrk

SLO_MS = 150.0
GPU = {"instance_type": "g4dn.xlarge", "latency_ms": {"1": 20.5, "32": 36.0}, "max_batch": 32}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", default="4,16,64,128")
    args = parser.parse_args()
    require_tools()
    model = {"name": "demo", "slo": {"latency_ms": SLO_MS, "percentile": 0.98},
             "profiles": {"g4dn.xlarge": GPU}, "max_batch": 32}  # fmt: skip
    pace = ["--model", "demo=builtin:mlp", "--instance-type", "g4dn.xlarge",
            "--profiles", json.dumps({"demo": GPU}), "--max-batch", "1"]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        workers = [start_worker(*pace) for _ in range(2)]
        procs = list(workers)
        try:
            nginx = start_nginx([w.url for w in workers], work)
            procs.append(nginx)
            front = start_front(model, [("g4dn.xlarge", w.url) for w in workers], work)
            procs.append(front)
            path = "/v2/models/demo/infer"
            print(f"# bench_batching: {machine()}; SLO {SLO_MS:g} ms; T(b) = 20 + 0.5 b ms")
            print(f"{'conns':>5} {'target':>6} {'req/s':>8} {'p99 ms':>8} {'in SLO':>7} "
                  f"{'goodput':>8} {'mark/nginx':>10}")  # fmt: skip
            best = {"mark": 0.0, "nginx": 0.0}
            for conns in [int(c) for c in args.connections.split(",")]:
                got = {
                    n: wrk(u + path, connections=conns, duration_s=args.duration, slo_ms=SLO_MS)
                    for n, u in (("nginx", nginx.url), ("mark", front.url))
                }
                for n, r in got.items():
                    best[n] = max(best[n], r["goodput_rps"])
                    ratio = r["goodput_rps"] / max(got["nginx"]["goodput_rps"], 1e-9)
                    print(
                        f"{conns:>5} {n:>6} {r['rps']:>8.0f} {r['p99_us'] / 1e3:>8.1f} "
                        f"{r['within_slo']:>7.1%} {r['goodput_rps']:>8.0f} {ratio:>10.2f}"
                    )
            print(
                f"best goodput: mark {best['mark']:.0f} req/s, nginx {best['nginx']:.0f} req/s, "
                f"ratio {best['mark'] / max(best['nginx'], 1e-9):.2f}x"
            )
        finally:
            for p in reversed(procs):
                p.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
