"""What a cache hit costs the front end in a many-model fleet, against today's single-model path
(issue 19, "Performance": under 5%).

Real Mark front ends side by side, measured in interleaved rounds with wrk against the same
two many-model workers (`--store` of 999 small ONNX models, a memory budget, demo pinned and 10
of the store's loaded on each): `single` has one model registered (demo, builtin:mlp), today's
single-model path; `many` has `--models` registered (demo and the 999), every one listed on both
workers, and is sent requests for demo, resident on both: every request is a cache hit, routed
by residency. The same workers serve both, so that the figures differ by the front end alone.
A third, `twin`, is a second `single`: its ratio to `single` is the noise of the run. All spill
to one local function pool, as under `mark serve` (its monitor watches their queues every
`spill.interval_ms`). The figure is the CPU time the
front end's process used per answered request (parsing, routing, batching, metrics, and its
background work: the fleet sync of every registered model and the residency read of every
instance each `batching.sync_interval_s`, the spill watch, the status sampler), and the ratio
many/single, taken per round and the median over rounds. Closed loops of C connections
saturate the front end; paced loads (8 connections, each pausing after every answer) stay below
it, where the background work weighs most per request.

    python bench/bench_cache_hit.py [--duration 5] [--rounds 3] [--connections 16]
                                    [--paced 300] [--models 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import urllib.request
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
    start_pool,
    start_worker,
    wrk,
)

PACED_CONNECTIONS = 8
LOADED_PER_WORKER = 10
PATH = "/v2/models/demo/infer"
SLO = {"latency_ms": 100, "percentile": 0.98}


def _store(root: Path, count: int) -> list[str]:
    """`count` small ONNX artifacts (tests/model_artifacts.py's, 4.2 kB each) in `root`."""
    from tests.model_artifacts import onnx_bytes

    data = onnx_bytes(1.0)
    names = [f"m{i:04d}" for i in range(count)]
    for name in names:
        (root / f"{name}.onnx").write_bytes(data)
    return names


def _load(worker: Proc, name: str) -> None:
    url = f"{worker.url}/v2/repository/models/{name}/load"
    with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=30) as r:
        assert r.status == 200


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per target and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", default="16", help="closed-loop loads (saturating)")
    parser.add_argument("--paced", default="300", help="offered req/s below saturation")
    parser.add_argument("--models", type=int, default=1000, help="models of the many-model fleet")
    args = parser.parse_args()
    require_tools()
    demo = {"name": "demo", "slo": SLO, "max_batch": 32}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for sub in ("store", "s", "t", "m"):
            (work / sub).mkdir()
        store = work / "store"
        names = _store(store, args.models - 1)
        extra = [{"name": n, "slo": SLO, "backend": {"artifact": f"onnx:{store / n}.onnx"}}
                 for n in names]  # fmt: skip
        size = (store / f"{names[0]}.onnx").stat().st_size
        budget = 2704 + (LOADED_PER_WORKER + 1) * size  # demo's weights and 10 of the store's
        procs: list[Proc] = []
        try:
            workers = [
                start_worker("--model", "demo=builtin:mlp", "--store", str(store),
                             "--memory-budget-bytes", str(budget), "--poll-s", "0")
                for _ in range(2)
            ]  # fmt: skip
            procs += workers
            pool = start_pool()  # both spill there, as under `mark serve`
            procs.append(pool)
            for k, worker in enumerate(workers):
                for name in names[k * LOADED_PER_WORKER : (k + 1) * LOADED_PER_WORKER]:
                    _load(worker, name)
            upstreams = [("c5.large", w.url) for w in workers]
            single = start_front(demo, upstreams, work / "s", pool=pool)
            procs.append(single)
            twin = start_front(demo, upstreams, work / "t", pool=pool)  # the noise floor
            procs.append(twin)
            many = start_front(demo, [("c5.large", w.url) for w in workers], work / "m",
                               extra_models=extra, pool=pool)  # fmt: skip
            procs.append(many)
            fronts = {"single": single, "twin": twin, "many": many}
            print(
                f"# bench_cache_hit: {machine()}; {args.rounds} interleaved rounds of wrk "
                f"{args.duration}s per front end and load; many: {args.models} models registered "
                f"and listed on 2 workers, {LOADED_PER_WORKER + 1} loaded on each; load average "
                + " ".join(f"{x:.2f}" for x in os.getloadavg())
            )
            print(f"{'load':>12} {'front':>6} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
                  f"{'CPU us/req':>10} {'/single':>8}")  # fmt: skip
            loads: list[tuple[str, int, int]] = [
                (f"{c} conns", c, 0) for c in (int(x) for x in args.connections.split(",") if x)
            ]
            for rate in (int(x) for x in args.paced.split(",") if x):
                pause_ms = max(1, round(PACED_CONNECTIONS * 1000 / rate))
                loads.append((f"paced {rate}/s", PACED_CONNECTIONS, pause_ms))
            verdicts = []
            for label, conns, pause_ms in loads:
                rows = _rounds(fronts, args.rounds, args.duration, conns, pause_ms)
                ratios = {
                    name: median(
                        r["cpu_us"] / s["cpu_us"] for s, r in zip(rows["single"], runs, strict=True)
                    )
                    for name, runs in rows.items()
                }
                for name, runs in rows.items():
                    print(
                        f"{label:>12} {name:>6} {median(r['rps'] for r in runs):>8.0f} "
                        f"{median(r['p50_us'] for r in runs) / 1e3:>7.2f} "
                        f"{median(r['p99_us'] for r in runs) / 1e3:>7.2f} "
                        f"{median(r['cpu_us'] for r in runs):>10.0f} {ratios[name]:>8.3f}"
                        + (
                            f"  errors={sum(r['errors'] for r in runs)}"
                            if any(r["errors"] for r in runs)
                            else ""
                        )
                    )
                verdicts.append((label, ratios["many"], ratios["twin"]))
            print("\n# a cache hit's front-end cost, many/single - 1 (target: under 5%), beside "
                  "twin/single - 1, the same front end as single: this run's noise")  # fmt: skip
            for label, ratio, twin_ratio in verdicts:
                print(f"{label:>12} {(ratio - 1) * 100:+6.1f}%  {'ok' if ratio < 1.05 else 'OVER'}"
                      f"   (twin {(twin_ratio - 1) * 100:+.1f}%)")  # fmt: skip
            print(json.dumps({label: [round(r, 4), round(t, 4)] for label, r, t in verdicts}))
        finally:
            for p in reversed(procs):
                p.stop()
    return 0


def _rounds(
    fronts: dict[str, Proc], rounds: int, duration_s: int, connections: int, pause_ms: int
) -> dict[str, list[dict[str, Any]]]:
    """wrk against each front end in turn, `rounds` times over (a slow spell of a shared
    machine falls on both within a round); each run carries the front end's CPU per answer."""
    got: dict[str, list[dict[str, Any]]] = {name: [] for name in fronts}
    for _ in range(rounds):
        for name, front in fronts.items():
            before_s = cpu_s([front])
            run = wrk(front.url + PATH, connections=connections, duration_s=duration_s,
                      slo_ms=SLO["latency_ms"], delay_ms=pause_ms)  # fmt: skip
            run["cpu_us"] = (cpu_s([front]) - before_s) / max(run["requests"], 1) * 1e6
            got[name].append(run)
    return got


if __name__ == "__main__":
    sys.exit(main())
