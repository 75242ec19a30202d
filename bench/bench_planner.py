"""Plan time for a many-model fleet (issue 6: 1,000 models x 100 offerings under 100 ms on one
core, capacities cached).

The fleet: 17 instance types x 3 zones x {on-demand, spot} (first 100 offerings), 1,000 models
each profiled on 6 types drawn from 8 model shapes, forecasts from a seeded random walk. The
first plan starts from nothing (it launches the whole fleet); its launches then run, the
forecasts move, and the steady-state plan is timed. Capacities are computed once (cold run, also
printed) and cached for the timed runs, as in the control loop.

Each timed plan reports the median wall time and the median and best CPU time of the process
(`time.process_time`): on a shared machine the wall time also counts waiting for a core, while
the target is about one core's work, so the CPU figures are the ones to hold against 100 ms.

    .venv/bin/python bench/bench_planner.py [--models 1000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np

from mark.core.config import PlannerConfig
from mark.core.types import (
    AcceleratorKind,
    Forecast,
    Instance,
    InstanceState,
    InstanceType,
    Market,
    Model,
    Offering,
    Profile,
    Slo,
)
from provisioner.policy.capacity import CapacityCache
from provisioner.policy.planner import FleetSnapshot, Launch, plan
from provisioner.policy.snapshot import build_snapshot

ZONES = ("us-east-1a", "us-east-1b", "us-east-1c")
TICK_S = 60.0  # the control loop's default tick


def fleet_types(count: int = 17) -> dict[str, InstanceType]:
    types = {}
    for i in range(count):
        gpu = i % 5 == 4
        types[f"t{i:02d}.large"] = InstanceType(
            name=f"t{i:02d}.large",
            vcpus=2 * (1 + i % 4),
            memory_gib=4.0 * (1 + i % 4),
            accelerator=AcceleratorKind.GPU if gpu else AcceleratorKind.NONE,
            accelerator_count=1 if gpu else 0,
            on_demand_price_per_hour=round(0.085 * (1 + i % 4) * (10 if gpu else 1), 4),
        )
    return types


def fleet_offerings(types: dict[str, InstanceType], limit: int = 100) -> tuple[Offering, ...]:
    out = []
    for name, itype in sorted(types.items()):
        for zi, zone in enumerate(ZONES):
            price = itype.on_demand_price_per_hour
            out.append(
                Offering(
                    instance_type=name, zone=zone, market=Market.ON_DEMAND, price_per_hour=price
                )
            )
            out.append(
                Offering(
                    instance_type=name,
                    zone=zone,
                    market=Market.SPOT,
                    price_per_hour=round(price * (0.3 + 0.05 * zi), 4),
                )
            )
    return tuple(out[:limit])


def fleet_models(
    types: dict[str, InstanceType], count: int, rng: np.random.Generator
) -> list[Model]:
    names = sorted(types)
    shapes = []
    for s in range(8):
        base_ms = 20.0 + 25.0 * s
        shapes.append((base_ms, 2.0 + s, [names[(s * 3 + k) % len(names)] for k in range(6)]))
    models = []
    for m in range(count):
        base_ms, per_ms, type_names = shapes[m % len(shapes)]
        profiles = {}
        for k, t in enumerate(type_names):
            speed = 1.0 / (1 + (k % 4)) if types[t].accelerator == AcceleratorKind.NONE else 0.2
            profiles[t] = Profile(
                instance_type=t,
                latency_ms={1: base_ms * speed + per_ms, 8: base_ms * speed + 8 * per_ms},
                max_batch=8,
                parallelism=1 + k % 2,
            )
        models.append(
            Model(
                name=f"model-{m:04d}",
                slo=Slo(latency_ms=base_ms * 6 + 200, percentile=0.98),
                profiles=profiles,
                max_batch=8,
            )
        )
    return models


def forecasts(models: list[Model], now_s: float, rng: np.random.Generator) -> dict[str, Forecast]:
    out = {}
    for model in models:
        level = float(rng.lognormal(mean=2.0, sigma=1.0))
        walk = level * np.exp(np.cumsum(rng.normal(0.0, 0.05, 6)))
        out[model.name] = Forecast(
            start_s=now_s, bucket_s=60.0, mean_rps=tuple(walk), upper_rps=tuple(walk * 1.2)
        )
    return out


def snapshot(models, fc, instances, offerings, types, now_s, state=None) -> FleetSnapshot:
    return build_snapshot(
        now_s,
        models,
        fc,
        instances=instances,
        offerings=offerings,
        instance_types=types,
        tick_s=TICK_S,
        state=state,
    )


def timed(run: Callable[[], object], repeat: int) -> tuple[float, float, float]:
    """Median wall, median CPU and best CPU milliseconds of `repeat` calls."""
    walls, cpus = [], []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        run()
        cpus.append(time.process_time() - c0)
        walls.append(time.perf_counter() - w0)
    return statistics.median(walls) * 1e3, statistics.median(cpus) * 1e3, min(cpus) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    types = fleet_types()
    offerings = fleet_offerings(types)
    models = fleet_models(types, args.models, rng)
    # The first plan launches the whole fleet at once, as a bench of plan time wants: no caps.
    config = PlannerConfig(max_launches_per_tick=10**6, max_launches_per_type_per_tick=10**6)
    cache = CapacityCache()
    now = 1_700_000_000.0
    first = snapshot(models, forecasts(models, now, rng), (), offerings, types, now)
    t0 = time.perf_counter()
    cold = plan(first, config, cache)
    cold_s = time.perf_counter() - t0
    launches = [a for a in cold.actions if isinstance(a, Launch)]
    running = [
        Instance(
            id=f"i-{k:06d}",
            offering=a.offering,
            models=(a.model,),
            state=InstanceState.RUNNING,
            launched_at_s=now - 600,
            running_at_s=now - 480,
        )
        for k, a in enumerate(launches)
    ]
    later = now + 60.0
    steady = snapshot(
        models, forecasts(models, later, rng), running, offerings, types, later, cold.state
    )
    result = plan(steady, config, cache)
    again = plan(first, config, cache)
    steady_ms = timed(lambda: plan(steady, config, cache), args.repeat)
    empty_ms = timed(lambda: plan(first, config, cache), args.repeat)
    print(f"load average {os.getloadavg()[0]:.1f} (this machine is shared: compare ratios)")
    print(
        f"fleet: {len(models)} models x {len(offerings)} offerings, {len(types)} types; "
        f"{len(cache)} distinct capacities"
    )
    print(
        f"cold plan from empty (capacities computed): {cold_s * 1e3:9.1f} ms, "
        f"{len(launches)} launches"
    )
    print(f"timed plans, {args.repeat} runs each: wall median / CPU median / CPU best (ms)")
    print(
        "warm plan from empty:        {:7.1f} / {:7.1f} / {:7.1f}, ".format(*empty_ms)
        + f"{sum(isinstance(a, Launch) for a in again.actions)} launches"
    )
    print(
        f"steady plan, {len(running)} running: "
        + "{:7.1f} / {:7.1f} / {:7.1f}, ".format(*steady_ms)
        + f"{len(result.actions)} actions, {len(result.decisions)} decisions"
    )
    print(
        f"target 100 ms: CPU median / target = steady {steady_ms[1] / 100.0:.2f}x, "
        f"warm from empty {empty_ms[1] / 100.0:.2f}x"
    )


if __name__ == "__main__":
    main()
