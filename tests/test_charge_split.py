"""The per-model ledger's rules (provisioner.policy.billing): an instance's charge for a period
is shared among the models it served by their busy time, and a period's charge is billed at the
price in force then."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mark.core.types import InstanceType
from provisioner.policy.billing import period_charge_usd, split_charge

MODELS = st.sampled_from(["a", "b", "c", "d", ""])
BUSY = st.dictionaries(MODELS, st.floats(min_value=0.0, max_value=1e6), max_size=5)
LISTED = st.lists(MODELS, max_size=4, unique=True)
USD = st.floats(min_value=0.0, max_value=1e4)

C5 = InstanceType(
    name="c5.large",
    vcpus=2,
    memory_gib=4,
    on_demand_price_per_hour=0.085,
)


@settings(max_examples=300, deadline=None)
@given(USD, BUSY, LISTED)
@example(1.5, {"a": 5e-324}, [])  # subnormal busy times: found by the property (2026-12-02)
@example(1.5, {"a": 5e-324, "b": 5e-324}, [])
def test_the_parts_sum_to_the_charge_none_negative_in_proportion_to_busy_time(
    usd: float, busy: dict[str, float], listed: list[str]
) -> None:
    parts = split_charge(usd, busy, listed)
    assert math.fsum(parts.values()) == pytest.approx(usd, rel=1e-12, abs=1e-12)
    assert all(p >= 0 for p in parts.values())
    served = {m: s for m, s in busy.items() if s > 0}
    if served:
        assert set(parts) == set(served)
        total = math.fsum(served.values())
        for m, s in served.items():
            assert parts[m] == pytest.approx(usd * (s / total), rel=1e-9, abs=1e-9)
    else:  # nothing recorded: the listed models share it equally
        assert set(parts) == set(listed or [""])
        for p in parts.values():
            assert p == pytest.approx(usd / len(parts), rel=1e-9, abs=1e-12)


def test_a_worked_example() -> None:
    # One instance served a for 30 s and b for 10 s of a $1.00 hour: 75 c and 25 c.
    assert split_charge(1.0, {"a": 30.0, "b": 10.0}, ["a"]) == pytest.approx({"a": 0.75, "b": 0.25})
    # An idle period goes to its listed models equally; one listing none, to "".
    assert split_charge(0.6, {"a": 0.0}, ["a", "b", "c"]) == pytest.approx(
        {"a": 0.2, "b": 0.2, "c": 0.2}
    )
    assert split_charge(0.6, {}, []) == {"": 0.6}


def test_periods_add_up_to_the_run_at_one_price_and_follow_a_moving_price() -> None:
    # The 60 s minimum is billed once: 10 s then 70 s then 3600 s at one price is the run's charge.
    steps = [0.0, 10.0, 70.0, 3600.0]
    periods = [period_charge_usd(C5, a, b, 0.085) for a, b in zip(steps, steps[1:], strict=False)]
    assert math.fsum(periods) == pytest.approx(C5.charge_usd(3600.0, 0.085))
    assert periods[0] == pytest.approx(60 * 0.085 / 3600)  # the minimum, up front
    assert periods[1] == pytest.approx(10 * 0.085 / 3600)  # 70 s billed, 60 already paid
    # A spot hour at 0.03 then one at 0.05: each period at its own price.
    first, second = period_charge_usd(C5, 0, 3600, 0.03), period_charge_usd(C5, 3600, 7200, 0.05)
    assert (first, second) == pytest.approx((0.03, 0.05))
    assert period_charge_usd(C5, 100.0, 100.0, 0.05) == 0.0
