"""The data plane's rules (provisioner/policy/dataplane.py), the ones the front end and the
simulator both call: batch plans, routing weights, service rates and the spill walk."""

from __future__ import annotations

from mark.core.types import Slo
from provisioner.policy.batching import BatchPlan, slo_batch
from provisioner.policy.capacity import CapacityCache, slo_capacity
from provisioner.policy.dataplane import (
    MIN_WEIGHT,
    batch_plan,
    last_kept_position,
    routing_weight,
    select_spills,
    service_rate_rps,
)
from provisioner.policy.spill import QueueView, ServerlessProfile, SpillReason
from tests.dataplane import linear_profile

SLO = Slo(latency_ms=500, percentile=0.98)
GPU = linear_profile("g4dn.xlarge", 100.0, 10.0, max_batch=32)
POOL = ServerlessProfile(warm_ms=50, cold_start_ms=1000, idle_warm=2, free_slots=3)


def test_batch_plan_sizes_against_the_budget_share_of_the_slo() -> None:
    assert batch_plan(GPU, SLO, 40.0, 16, 0.8) == slo_batch(GPU, 400.0, 40.0, 16)
    assert batch_plan(GPU, SLO, 40.0, 16, 0.5) == slo_batch(GPU, 250.0, 40.0, 16)


def test_batch_plan_without_batching_or_without_a_profile() -> None:
    assert batch_plan(GPU, SLO, 40.0, 16, 0.8, batching=False) == BatchPlan(1, 0.0, 110.0)
    assert batch_plan(None, SLO, 40.0, 16, 0.8, batching=False) == BatchPlan(1, 0.0, 0.0)
    # no T(b) to size with: what waits leaves at once, as one batch of up to max_batch
    assert batch_plan(None, SLO, 40.0, 16, 0.8) == BatchPlan(16, 0.0, 0.0)


def test_routing_weight_is_capacity_at_the_slo_with_a_floor() -> None:
    cache = CapacityCache()
    assert routing_weight(GPU, SLO, 32, cache) == slo_capacity(GPU, SLO, 32, cache).rate_rps
    too_slow = linear_profile("c5.large", 600.0, 10.0)
    assert routing_weight(too_slow, SLO, 32, cache) == MIN_WEIGHT


def test_service_rate_is_parallelism_times_b_over_t() -> None:
    assert service_rate_rps(2, BatchPlan(size=4, timeout_ms=0.0, service_ms=100.0)) == 80.0
    assert service_rate_rps(2, BatchPlan(size=4, timeout_ms=0.0, service_ms=0.0)) == 0.0


def test_walk_spills_the_threatened_and_moves_the_rest_up() -> None:
    # 10 requests/s, T(b) = 50 ms, deadline 0.5 s after now: position p completes at
    # p/10 + 0.05 s, so with a 20 ms margin positions 0-4 fit and position 5 on does not.
    queue = QueueView(ahead=2, service_rate_rps=10.0, batch_service_ms=50.0, running_instances=1)
    chosen, left = select_spills([0.5] * 6, queue, now_s=0.0, slo=SLO, pool=POOL, margin_ms=20)
    # positions 2, 3, 4 stay; 5 and on are threatened, and each spill leaves the next one at
    # position 5. The two idle warm functions take two in time; the third would start cold
    # (1.05 s, past its deadline) but misses in line too (0.55 s): it goes as overload.
    assert chosen == [
        (3, SpillReason.DEADLINE),
        (4, SpillReason.DEADLINE),
        (5, SpillReason.OVERLOAD),
    ]
    assert left.free_slots == 0 and left.idle_warm == 0


def test_a_pool_slower_than_the_slo_takes_only_what_would_miss_in_line() -> None:
    # The pool answers in 2 s, past every deadline: a request that the queue still serves in
    # time (or within the margin of it) stays; one past its deadline in line leaves, so the
    # queue stays at the deadline's length and the requests behind it meet theirs.
    slow = ServerlessProfile(warm_ms=2000, cold_start_ms=1000, idle_warm=5, free_slots=5)
    queue = QueueView(ahead=3, service_rate_rps=10.0, batch_service_ms=50.0, running_instances=1)
    # positions 3, 4 complete at 0.35 s and 0.45 s (0.45 within the 20 ms margin, kept); 5 on
    # at 0.55 s: past the deadline, each one spilled leaves the next at position 5.
    chosen, left = select_spills([0.5] * 5, queue, now_s=0.0, slo=SLO, pool=slow, margin_ms=20)
    assert chosen == [
        (2, SpillReason.OVERLOAD),
        (3, SpillReason.OVERLOAD),
        (4, SpillReason.OVERLOAD),
    ]
    assert left.free_slots == 2
    # no slot free: everything stays in line
    full = ServerlessProfile(warm_ms=2000, cold_start_ms=1000, idle_warm=0, free_slots=0)
    assert select_spills([0.5] * 5, queue, now_s=0.0, slo=SLO, pool=full, margin_ms=20)[0] == []


def test_walk_keeps_requests_marked_to_stay_and_stops_when_the_pool_is_full() -> None:
    queue = QueueView(ahead=0, service_rate_rps=1.0, batch_service_ms=50.0, running_instances=1)
    one_slot = ServerlessProfile(warm_ms=50, cold_start_ms=1000, idle_warm=1, free_slots=1)
    deadlines = [0.5, None, 0.5, 0.5]
    chosen, left = select_spills(deadlines, queue, now_s=0.0, slo=SLO, pool=one_slot, margin_ms=20)
    # 0 fits; 1 stays (marked) and counts ahead; 2 is at position 2: spills; the pool is full
    assert chosen == [(2, SpillReason.DEADLINE)] and left.free_slots == 0


def test_cold_fleet_and_draining_spill_without_the_deadline_test() -> None:
    late = [0.01]  # no serverless latency fits: they still spill
    chosen, _ = select_spills(late, QueueView(), now_s=0.0, slo=SLO, pool=POOL, margin_ms=20)
    assert chosen == [(0, SpillReason.COLD_FLEET)]
    draining = QueueView(
        service_rate_rps=100.0, batch_service_ms=5.0, running_instances=1, draining=True
    )
    chosen, _ = select_spills(late, draining, now_s=0.0, slo=SLO, pool=POOL, margin_ms=20)
    assert chosen == [(0, SpillReason.DRAINING)]


def test_last_kept_position_is_where_the_walk_starts_spilling() -> None:
    # p/10 + 0.05 <= 0.5 - 0.02 holds up to p = 4
    queue = QueueView(service_rate_rps=10.0, batch_service_ms=50.0, running_instances=1)
    assert last_kept_position(queue, SLO, 20.0) == 4
    for position in (4, 5):
        at = QueueView(position, 10.0, 50.0, 1)
        chosen, _ = select_spills([0.5], at, now_s=0.0, slo=SLO, pool=POOL, margin_ms=20)
        assert bool(chosen) == (position > 4)
    slow = QueueView(service_rate_rps=10.0, batch_service_ms=490.0, running_instances=1)
    assert last_kept_position(slow, SLO, 20.0) == -1
