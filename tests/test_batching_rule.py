"""The batch-size rule (provisioner/policy/batching.py): sized by the rate for requests to come, and
by T(b) alone for a backlog that already waits, where that ends the backlog sooner."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mark.apps.simulator.instance_queue import InstanceQueue
from mark.core.catalog import load_catalog
from mark.core.types import Profile
from provisioner.policy.batching import backlog_take, slo_batch, take_batch

GPU = Profile(instance_type="g4dn.xlarge", latency_ms={1: 381.0, 32: 629.0}, max_batch=32)
CPU = Profile(instance_type="c5.large", latency_ms={1: 200.0, 4: 800.0}, max_batch=4)


def test_a_low_rate_sizes_one_but_a_backlog_leaves_together() -> None:
    plan = slo_batch(GPU, budget_ms=1120.0, rate_rps=0.5, max_batch=32)
    assert plan.size == 1  # one more request would take 2 s to arrive
    assert plan.backlog_size == 32  # T(32) = 629 ms fits the budget
    assert backlog_take(plan, waiting=1, waited_ms=0.0) == 1
    assert backlog_take(plan, waiting=4, waited_ms=300.0) == 4
    # The oldest has waited 700 ms: 700 + a + c k <= 1120 leaves room for k <= 5.
    assert backlog_take(plan, waiting=20, waited_ms=700.0) == 5
    # Past saving: never below the rate's size.
    assert backlog_take(plan, waiting=20, waited_ms=5000.0) == 1


def test_a_profile_without_a_fixed_cost_never_grows_a_backlog_batch() -> None:
    plan = slo_batch(CPU, budget_ms=480.0, rate_rps=50.0, max_batch=4)
    assert plan.backlog_size == 0
    assert backlog_take(plan, waiting=4, waited_ms=0.0) == plan.size


def test_a_burst_behind_a_busy_gpu_rides_one_batch_in_the_simulator() -> None:
    """Four requests arrive while the instance serves a fifth: with batches of one they would
    finish 381 ms apart, the last 1.9 s after arriving; as one batch they finish together."""
    plan = slo_batch(GPU, budget_ms=1120.0, rate_rps=0.5, max_batch=32)
    queue = InstanceQueue(servers=1, a_ms=GPU.a_ms, c_ms=GPU.c_ms)
    arrivals = np.array([0.0, 0.05, 0.1, 0.15, 0.2])
    served = queue.flush_after(arrivals, plan)
    done = served.completion_s
    assert done[0] == np.float64(GPU.service_ms(1) / 1000.0)
    assert np.all(done[1:] == done[1])  # one batch of four
    assert done[1] == done[0] + GPU.service_ms(4) / 1000.0
    assert float(np.max(served.latency_ms)) < 1120.0


def test_the_catalog_gpu_profiles_batch_a_backlog_and_cpu_ones_do_not() -> None:
    opennmt = load_catalog().model("opennmt-ende").to_model()
    gpu = slo_batch(opennmt.profiles["g4dn.xlarge"], 1120.0, 1.0, opennmt.max_batch)
    assert gpu.size == 1 and gpu.backlog_size > 1
    inception = load_catalog().model("inception-v3").to_model()
    cpu = slo_batch(inception.profiles["c5.large"], 480.0, 1.0, inception.max_batch)
    assert cpu.backlog_size == 0  # T(b) = 12.6 + 197.4 b ms: a batch only delays its oldest


@settings(max_examples=400, deadline=None)
@given(
    t1=st.floats(0.01, 2000.0),
    slope=st.floats(0.0, 200.0),
    budget_ms=st.floats(0.0, 5000.0),
    rate_rps=st.floats(1e-6, 1e6) | st.sampled_from([1e-300, 5e-324]),
    cap=st.integers(1, 64),
)
def test_the_batch_size_is_the_largest_that_fits_as_testing_every_size_finds(
    t1: float, slope: float, budget_ms: float, rate_rps: float, cap: int
) -> None:
    """slo_batch solves for b in closed form; it must agree with the definition, every size from
    2 up tried in turn, including where rounding puts a size exactly on the budget."""
    profile = Profile(
        instance_type="x", latency_ms={1: t1, cap: t1 + slope * (cap - 1)}, max_batch=cap
    )
    expected = 1
    for b in range(2, cap + 1):
        if (b - 1) / rate_rps * 1000.0 + profile.service_ms(b) > budget_ms:
            break
        expected = b
    assert slo_batch(profile, budget_ms, rate_rps, cap).size == expected


@dataclass(frozen=True)
class _Item:
    """Anything with a batch key and rows batches (the front end's QueuedRequest, the worker's
    waiting requests)."""

    name: str
    key: str | None
    rows: int = 1


def test_take_batch_is_fifo_within_a_key() -> None:
    """A same-key request that does not fit ends the batch: the ones behind it do not overtake
    it (the worker used to skip it and take them); other keys keep their places."""
    a, big, other, c = _Item("a", "k", 2), _Item("big", "k", 3), _Item("o", "j"), _Item("c", "k")
    pending = deque([a, other, big, c])
    assert take_batch(pending, 4) == [a]
    assert list(pending) == [other, big, c]
    assert take_batch(pending, 4) == [other]
    assert take_batch(pending, 4) == [big, c]
    alone = deque([_Item("x", None), _Item("y", None)])
    assert take_batch(alone, 4) == [_Item("x", None)]  # no key: it leaves alone
