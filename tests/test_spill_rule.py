"""The pure spill rule (provisioner/policy/spill.py): examples from DESIGN.md's formula and
properties."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mark.core.types import Slo
from provisioner.policy.spill import (
    QueueView,
    ServerlessProfile,
    SpillReason,
    expected_completion_s,
    spill_reason,
)

SLO = Slo(latency_ms=500, percentile=0.98)
WARM = ServerlessProfile(warm_ms=100, cold_start_ms=800, idle_warm=2, free_slots=4)
NOW_S = 1_000.0
DEADLINE_S = NOW_S + 0.5


def queue(
    *, rate: float = 10.0, t_ms: float = 50.0, running: int = 1, draining: bool = False
) -> QueueView:
    return QueueView(
        service_rate_rps=rate,
        batch_service_ms=t_ms,
        running_instances=running,
        draining=draining,
    )


def reason(
    position: int,
    pool: ServerlessProfile = WARM,
    margin_ms: float = 20,
    *,
    rate: float = 10.0,
    t_ms: float = 50.0,
    running: int = 1,
    draining: bool = False,
) -> SpillReason | None:
    """The rule for a request due at DEADLINE_S, `position` requests ahead of it."""
    view = queue(rate=rate, t_ms=t_ms, running=running, draining=draining)
    return spill_reason(view, position, DEADLINE_S, NOW_S, SLO, pool, margin_ms)


def test_expected_completion_is_position_over_rate_plus_batch_time() -> None:
    assert expected_completion_s(queue(), 3, NOW_S) == NOW_S + 0.3 + 0.05


def test_request_that_fits_stays_queued() -> None:
    # 2 ahead at 10 rps: 0.2 s + 0.05 s, well before the 0.5 s deadline less 20 ms.
    assert reason(2) is None


def test_request_past_deadline_minus_margin_spills_when_pool_fits() -> None:
    # 5 ahead: 0.5 + 0.05 s > 0.48 s, and the warm pool answers in 0.1 s.
    assert reason(5) == SpillReason.DEADLINE


def test_margin_alone_tips_the_decision() -> None:
    # 4 ahead: 0.4 + 0.05 = 0.45 s. Fits with a 20 ms margin, not with a 60 ms one.
    assert reason(4, margin_ms=20) is None
    assert reason(4, margin_ms=60) == SpillReason.DEADLINE


def test_a_late_pool_takes_only_what_misses_in_line_too() -> None:
    cold = ServerlessProfile(warm_ms=100, cold_start_ms=800, idle_warm=0, free_slots=4)
    # 4 ahead: 0.45 s in line, within the 20 ms margin: a cold start (0.9 s) would miss, so
    # the request stays (it would not stay with a pool in time: see above).
    assert reason(4, cold, margin_ms=60) is None
    # 50 ahead: 5.05 s in line, past the deadline; the pool misses it too, but the request
    # leaves the queue for those behind it (overload).
    assert reason(50, cold) == SpillReason.OVERLOAD


def test_cold_fleet_spills_even_when_late() -> None:
    cold = ServerlessProfile(warm_ms=100, cold_start_ms=800, idle_warm=0, free_slots=1)
    assert reason(0, cold, running=0, rate=0.0) == SpillReason.COLD_FLEET


def test_draining_instance_spills() -> None:
    assert reason(0, draining=True) == SpillReason.DRAINING


def test_full_or_disabled_pool_never_takes_a_spill() -> None:
    full = ServerlessProfile(warm_ms=100, cold_start_ms=800, idle_warm=0, free_slots=0)
    off = ServerlessProfile(
        warm_ms=100, cold_start_ms=800, idle_warm=2, free_slots=4, enabled=False
    )
    for pool in (full, off):
        assert reason(0, pool, running=0, rate=0.0) is None
        assert reason(500, pool) is None


positions = st.integers(min_value=0, max_value=10_000)
rates = st.floats(min_value=0.01, max_value=10_000, allow_nan=False)
times_ms = st.floats(min_value=0.0, max_value=5_000, allow_nan=False)


@settings(derandomize=True, deadline=None)
@given(positions, positions, rates, times_ms)
def test_deadline_spill_is_monotone_in_queue_position(
    a: int, b: int, rate: float, t_ms: float
) -> None:
    """A request further back never stays while one nearer the head spills."""
    near, far = sorted((a, b))
    if reason(near, rate=rate, t_ms=t_ms) is not None:
        assert reason(far, rate=rate, t_ms=t_ms) is not None


@settings(derandomize=True, deadline=None)
@given(positions, rates, times_ms, st.floats(min_value=0, max_value=2_000))
def test_deadline_spill_only_when_the_pool_beats_the_deadline(
    position: int, rate: float, t_ms: float, warm_ms: float
) -> None:
    pool = ServerlessProfile(warm_ms=warm_ms, cold_start_ms=0, idle_warm=1, free_slots=1)
    if reason(position, pool, rate=rate, t_ms=t_ms) == SpillReason.DEADLINE:
        assert NOW_S + warm_ms / 1000 <= DEADLINE_S
        view = queue(rate=rate, t_ms=t_ms)
        assert expected_completion_s(view, position, NOW_S) > DEADLINE_S - 0.02


@settings(derandomize=True, deadline=None)
@given(positions, rates, times_ms, st.floats(min_value=0, max_value=5_000))
def test_overload_spill_only_for_requests_that_miss_in_line(
    position: int, rate: float, t_ms: float, warm_ms: float
) -> None:
    pool = ServerlessProfile(warm_ms=warm_ms, cold_start_ms=0, idle_warm=1, free_slots=1)
    if reason(position, pool, rate=rate, t_ms=t_ms) == SpillReason.OVERLOAD:
        assert NOW_S + warm_ms / 1000 > DEADLINE_S  # the pool is late too
        view = queue(rate=rate, t_ms=t_ms)
        assert expected_completion_s(view, position, NOW_S) > DEADLINE_S
