"""Capacity at the SLO against the simulator: for every catalog (model, type) with a positive
capacity, one instance of the type runs the simulator's data plane (`run_policy`, a fixed fleet
of one, spill off, no interruptions) on seeded constant-rate arrivals at multiples of the
capacity, and the table gives the SLO attainment of each run.

Columns: `old` the capacity of `--compare REV`'s capacity.py (when given), `new` this tree's,
`model` the fraction within the SLO that `queueing.batch_within_prob` predicts at `new` (one
server), then the simulated attainment at 0.95x and 1.0x of `new` and at `old`, and `edge` the
largest multiple of `new` on the grid 1.0, 1.05, ... that still met the SLO in its run (`>`:
the last multiple tried met it too). A case is `ok` when 1.0x meets the SLO, and `loose` as well
when no multiple up to 1.15x missed it (the capacity is then more than ~15% below what the
simulator sustains). Per-key time: one search, cold, CPU milliseconds of this process.

    .venv/bin/python bench/bench_capacity.py [--requests 100000] [--compare 3edeef0]
        [--models inception-v3,bert-base] [--types inf1.xlarge]
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mark.apps.simulator.engine import SimSettings, run_policy
from mark.apps.simulator.policies.static import StaticPolicy
from mark.apps.simulator.workload import Arrivals
from mark.core.catalog import load_catalog
from mark.core.catalog.values import ModelEntry
from mark.core.config import BatchingConfig, SpillConfig
from mark.core.types import Profile, Slo
from provisioner.policy.batching import backlog_take, slo_batch, slo_budget_ms
from provisioner.policy.capacity import CapacityCache, slo_capacity
from provisioner.policy.queueing import batch_within_prob
from traces import Trace

EDGE_GRID = (1.05, 1.10, 1.15, 1.25, 1.5, 2.0)
TIGHT = 1.15


def attainment(
    entry: ModelEntry, instance_type: str, rate_rps: float, requests: int, seed: int
) -> float:
    """SLO attainment of one instance of `instance_type` alone at `rate_rps` for about
    `requests` requests: the simulator's whole data plane (routing, batch plans at the routed
    rate, the batcher's queue), spill and interruptions off."""
    duration_s = requests / rate_rps
    bucket_s = min(max(duration_s / 50.0, 10.0), 3600.0)
    buckets = max(int(math.ceil(duration_s / bucket_s)), 1)
    trace = Trace(np.arange(buckets) * bucket_s, np.full(buckets, rate_rps * bucket_s), bucket_s)
    settings = SimSettings(
        seed=seed,
        types=(instance_type,),
        window_s=bucket_s,
        interruption_rate_per_hour=0.0,
        spill=SpillConfig(enabled=False),
    )
    policy = StaticPolicy(instance_type, capacity_rps=rate_rps, peak_rps=rate_rps)
    run = run_policy(
        policy,
        entry.to_model(),
        Arrivals(trace, seed),
        load_catalog(),
        settings,
        serverless_latency_ms=entry.serverless_latency_ms,
        serverless_memory_mb=entry.serverless_memory_mb,
    )
    return float(np.mean(run.latencies_ms <= entry.slo.latency_ms))


def predicted(profile: Profile, slo: Slo, max_batch: int, rate_rps: float) -> float | None:
    """What the one-server model says the fraction within the SLO is (None: several servers)."""
    if profile.parallelism != 1:
        return None
    budget = slo_budget_ms(slo.latency_ms, BatchingConfig().slo_budget_fraction)
    plan = slo_batch(profile, budget, rate_rps, max_batch)

    def take(waited_ms: float) -> int:
        return backlog_take(plan, 1 << 30, waited_ms)

    return batch_within_prob(rate_rps, profile.a_ms, profile.c_ms, take, slo.latency_ms)


def old_capacity(rev: str) -> Callable[[Profile, Slo, int], float]:
    """`capacity_rps` of capacity.py as it was at git revision `rev` (it imports this tree's
    other modules)."""
    root = Path(__file__).resolve().parent.parent
    source = subprocess.run(
        ["git", "show", f"{rev}:provisioner/policy/capacity.py"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    module = ModuleType(f"capacity_at_{rev}")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{rev}:provisioner/policy/capacity.py", "exec"), module.__dict__)
    cache = module.CapacityCache()

    def rate(profile: Profile, slo: Slo, max_batch: int) -> float:
        return float(module.slo_capacity(profile, slo, max_batch, cache).rate_rps)

    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--compare", default=None, help="git revision of the old capacity.py")
    parser.add_argument("--models", default=None)
    parser.add_argument("--types", default=None)
    args = parser.parse_args()
    catalog = load_catalog()
    old = old_capacity(args.compare) if args.compare else None
    models = args.models.split(",") if args.models else list(catalog.models)
    types = set(args.types.split(",")) if args.types else None
    print(f"load average {os.getloadavg()[0]:.1f}; {args.requests} requests per run")
    head = (
        f"{'model':20} {'type':12} {'old':>9} {'new':>9} {'ms':>5} {'model':>7} "
        f"{'0.95x':>7} {'1.0x':>7} {'at old':>7} {'edge':>6}  verdict"
    )
    print(head)
    failures = 0
    times_ms: list[float] = []
    for name in models:
        entry = catalog.model(name)
        max_batch = entry.to_model().max_batch
        slo = entry.slo
        for itype, profile in entry.profiles.items():
            if types is not None and itype not in types:
                continue
            t0 = time.process_time()
            cap = slo_capacity(profile, slo, max_batch, CapacityCache()).rate_rps
            times_ms.append((time.process_time() - t0) * 1000.0)
            if cap <= 0:
                continue
            old_rps = old(profile, slo, max_batch) if old is not None else math.nan
            model = predicted(profile, slo, max_batch, cap)

            def run(rate: float, entry: ModelEntry = entry, itype: str = itype) -> float:
                return attainment(entry, itype, rate, args.requests, args.seed)

            at = {f: run(cap * f) for f in (0.95, 1.0)}
            at_old = run(old_rps) if old_rps > 0 else math.nan
            edge = 1.0 if at[1.0] >= slo.percentile else 0.0
            missed_by = math.inf
            if edge:
                for f in EDGE_GRID:
                    if run(cap * f) < slo.percentile:
                        missed_by = f
                        break
                    edge = f
            ok = at[1.0] >= slo.percentile
            failures += not ok
            verdict = "ok" if ok else "MISSES"
            if ok and missed_by > TIGHT:
                verdict += ", loose"
            edge_text = f"{edge:.2f}" if math.isfinite(missed_by) else f">{edge:.2f}"
            print(
                f"{name:20} {itype:12} {old_rps:9.3f} {cap:9.3f} {times_ms[-1]:5.0f} "
                f"{model if model is not None else math.nan:7.4f} {at[0.95]:7.4f} "
                f"{at[1.0]:7.4f} {at_old:7.4f} {edge_text:>6}  {verdict}",
                flush=True,
            )
    times_ms.sort()
    print(
        f"per-key search: median {times_ms[len(times_ms) // 2]:.1f} ms, "
        f"max {times_ms[-1]:.1f} ms CPU ({len(times_ms)} keys, the first of each process cold)"
    )
    print(f"{failures} case(s) miss the SLO at 1.0x")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
