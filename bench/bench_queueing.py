"""M/D/c timings (issue 6: `mdc_wait_prob` for c <= 64 under 1 ms after warm-up) and the cost
of one capacity-at-the-SLO search, which the planner pays once per distinct (profile, SLO).

Cold: first call for an offered load (the stationary law is solved); warm: further calls at
the same load with different t (the cached law and one dot product). Figures are medians;
ratios are against the 1 ms target, measured in this run.

    .venv/bin/python bench/bench_queueing.py
"""

from __future__ import annotations

import os
import statistics
import time

from mark.core.types import Profile, Slo
from provisioner.policy.capacity import CapacityCache, slo_capacity
from provisioner.policy.queueing import _waiting_room, mdc_wait_prob


def main() -> None:
    print(f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'c':>3} {'rho':>5} {'cold ms':>9} {'warm us':>9} {'warm/1ms':>9}")
    for servers in (1, 8, 32, 64):
        for rho in (0.5, 0.9, 0.99):
            rate = rho * servers
            _waiting_room.cache_clear()
            t0 = time.perf_counter()
            mdc_wait_prob(rate, 1.0, servers, 0.5)
            cold_ms = (time.perf_counter() - t0) * 1e3
            warm = []
            for i in range(2000):
                t0 = time.perf_counter()
                mdc_wait_prob(rate, 1.0, servers, 0.25 + i * 1e-3)
                warm.append(time.perf_counter() - t0)
            warm_us = statistics.median(warm) * 1e6
            print(f"{servers:>3} {rho:>5} {cold_ms:>9.2f} {warm_us:>9.1f} {warm_us / 1e3:>9.3f}")
    slo = Slo(latency_ms=600.0, percentile=0.98)
    profiles = {
        "cpu, unbatched": Profile(instance_type="c5.large", latency_ms={1: 180.0}),
        "gpu, batch 32 x 8": Profile(
            instance_type="p2.xlarge",
            latency_ms={1: 40.0, 32: 200.0},
            max_batch=32,
            parallelism=8,
        ),
    }
    for name, profile in profiles.items():
        _waiting_room.cache_clear()
        cache = CapacityCache()
        t0 = time.perf_counter()
        cap = slo_capacity(profile, slo, 32, cache)
        search_ms = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        slo_capacity(profile, slo, 32, cache)
        hit_us = (time.perf_counter() - t0) * 1e6
        print(
            f"capacity search {name}: {cap.rate_rps:.1f} rps (batch {cap.batch_size}) "
            f"in {search_ms:.1f} ms cold, {hit_us:.1f} us cached"
        )


if __name__ == "__main__":
    main()
