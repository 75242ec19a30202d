"""Smooth weighted round-robin: nginx's sequence, proportions, exclusion, membership."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioner.policy.routing import SmoothWeightedRoundRobin


def test_nginx_sequence_is_smooth() -> None:
    rr = SmoothWeightedRoundRobin()
    for key, weight in (("a", 5), ("b", 1), ("c", 1)):
        rr.set(key, weight)
    assert [rr.pick() for _ in range(7)] == ["a", "a", "b", "a", "c", "a", "a"]


@given(st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=6))
def test_each_cycle_is_exactly_proportional(weights: list[int]) -> None:
    rr = SmoothWeightedRoundRobin()
    for i, w in enumerate(weights):
        rr.set(f"i{i}", w)
    picks = Counter(rr.pick() for _ in range(sum(weights) * 3))
    assert picks == {f"i{i}": 3 * w for i, w in enumerate(weights)}


def test_remove_and_empty() -> None:
    rr = SmoothWeightedRoundRobin()
    assert rr.pick() is None
    rr.set("a", 1.0)
    rr.set("b", 3.0)
    rr.remove("b")
    rr.remove("missing")
    assert len(rr) == 1 and "b" not in rr
    assert {rr.pick() for _ in range(3)} == {"a"}
    with pytest.raises(ValueError):
        rr.set("c", 0)


def test_weight_change_takes_effect() -> None:
    rr = SmoothWeightedRoundRobin()
    rr.set("a", 1)
    rr.set("b", 1)
    rr.set("b", 3)
    picks = Counter(rr.pick() for _ in range(400))
    assert picks["b"] == pytest.approx(300, abs=4)
