"""Capacity at the SLO (provisioner/policy/capacity.py)."""

from __future__ import annotations

import numpy as np
import pytest

from frontend.fleet import Fleet
from mark.core.config import BatchingConfig
from mark.core.types import Profile, Slo
from provisioner.policy.batching import backlog_take, slo_batch
from provisioner.policy.capacity import CapacityCache, capacity_rps, slo_capacity
from provisioner.policy.queueing import mdc_wait_prob
from tests.dataplane import linear_profile, model, running
from tests.test_queueing import simulate_waits

SLO = Slo(latency_ms=600.0, percentile=0.98)
BUDGET_FRACTION = BatchingConfig().slo_budget_fraction


def cpu(ms: float = 180.0, parallelism: int = 1) -> Profile:
    return Profile(instance_type="c5.large", latency_ms={1: ms}, parallelism=parallelism)


def gpu() -> Profile:
    return Profile(
        instance_type="p2.xlarge",
        latency_ms={1: 40.0, 16: 120.0, 32: 200.0},
        max_batch=32,
        parallelism=4,
    )


def slo_met(profile: Profile, slo: Slo, max_batch: int, rate: float) -> bool:
    """The SLO test at `rate`, batches sized with the data plane's budget (as they run)."""
    b = slo_batch(profile, slo.latency_ms * BUDGET_FRACTION, rate, max_batch)
    room_s = (slo.latency_ms - b.service_ms) / 1000
    p = mdc_wait_prob(rate / b.size, b.service_ms / 1000, profile.parallelism, room_s)
    return p >= slo.percentile


def test_zero_when_one_request_alone_misses_the_slo() -> None:
    assert capacity_rps(cpu(700.0), SLO, 1) == 0.0


@pytest.mark.parametrize("profile,max_batch", [(cpu(), 1), (cpu(60.0, 2), 1), (gpu(), 32)])
def test_capacity_is_the_edge_of_the_slo(profile: Profile, max_batch: int) -> None:
    cache = CapacityCache()
    cap = slo_capacity(profile, SLO, max_batch, cache)
    assert cap.rate_rps > 0
    # Every rate up to the capacity meets the SLO; a little above it does not.
    for fraction in (0.05, 0.3, 0.7, 1.0):
        assert slo_met(profile, SLO, max_batch, cap.rate_rps * fraction)
    assert not slo_met(profile, SLO, max_batch, cap.rate_rps * 1.01)


def test_unbatched_capacity_holds_in_simulation() -> None:
    # One c5.large, no batching: a simulated M/D/1 at the capacity keeps 98% within the SLO.
    profile = cpu()
    rate = capacity_rps(profile, SLO, 1)
    waits = simulate_waits(rate, 0.18, 1, 1_000_000, seed=11)
    within = float(np.mean(waits + 0.18 <= SLO.latency_s))
    assert within == pytest.approx(SLO.percentile, abs=0.01)


def test_more_servers_looser_slo_and_batching_raise_capacity() -> None:
    base = capacity_rps(cpu(), SLO, 1)
    assert capacity_rps(cpu(parallelism=4), SLO, 1) > 3 * base
    assert capacity_rps(cpu(), Slo(latency_ms=1200.0, percentile=0.98), 1) > base
    assert capacity_rps(cpu(), Slo(latency_ms=600.0, percentile=0.9), 1) > base
    assert capacity_rps(gpu(), SLO, 32) > capacity_rps(gpu(), SLO, 1)


def test_cache_is_keyed_by_value() -> None:
    cache = CapacityCache()
    first = slo_capacity(cpu(), SLO, 1, cache)
    again = slo_capacity(cpu(), Slo(latency_ms=600.0, percentile=0.98), 1, cache)
    assert again == first
    assert len(cache) == 1
    slo_capacity(cpu(), SLO, 4, cache)
    assert len(cache) == 2


@pytest.mark.parametrize("fraction", [0.8, 0.6, 1.0])
@pytest.mark.parametrize(("a_ms", "c_ms"), [(100.0, 10.0), (30.0, 60.0)])
async def test_capacity_sizes_the_batch_the_front_end_runs(
    fraction: float, a_ms: float, c_ms: float
) -> None:
    """The planner buys capacity for a batch the front end's batcher forms, for the same model,
    profile and batching config: at the capacity's rate a real Fleet's plan for the instance has
    that b, or, where the batcher sends a backlog together (a > c), takes exactly that many from
    a backlog of that size. (Sized against the whole SLO, capacity counted b = 2 for the CPU-like
    profile at fraction 0.6, where the batcher runs b = 1.)"""
    profile = linear_profile("c5.large", a_ms, c_ms, max_batch=32)
    demo = model("demo", slo_ms=500.0, profiles=[profile], max_batch=32)
    config = BatchingConfig(slo_budget_fraction=fraction)
    cap = slo_capacity(profile, demo.slo, demo.max_batch, CapacityCache(budget_fraction=fraction))
    assert cap.rate_rps > 0
    fleet = Fleet(config)
    try:
        fleet.set_models([demo])
        fleet.set_instances([running("i-1", "http://127.0.0.1:9")])  # never called
        plan = fleet.batch_plan("demo", "i-1", cap.rate_rps)
    finally:
        await fleet.close()
    if a_ms <= c_ms:
        assert plan.size == cap.batch_size
    else:
        assert plan.size <= cap.batch_size
        assert backlog_take(plan, waiting=cap.batch_size, waited_ms=0.0) == cap.batch_size
    assert profile.service_ms(cap.batch_size) == pytest.approx(cap.service_ms)
