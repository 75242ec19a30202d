"""The cached tail of a many-model fleet (issue 16): which models hold memory
(`placement_fleet.split_cached`), the reserve the rest take on every instance
(`placement.place(cached=...)`), and where a model resident nowhere is loaded
(`placement_steps.load_target`)."""

from __future__ import annotations

import dataclasses
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mark.core.catalog import load_catalog
from mark.core.types import Slo
from provisioner.policy.capacity import CapacityCache
from provisioner.policy.placement import CacheShare, ModelNeed, Resident, place
from provisioner.policy.placement_fleet import LoadCost, split_cached
from provisioner.policy.placement_steps import LoadOption, load_target

CACHE = CapacityCache()
BERT = load_catalog().model("bert-base").to_model()
PROFILE = BERT.profiles["inf1.xlarge"]
SLO = Slo(latency_ms=1000.0, percentile=0.95)
LIMIT_MB = 8192.0


def need(name: str, rate: float, memory_mb: float = 800.0, slo: Slo = SLO) -> ModelNeed:
    return ModelNeed(name, rate, memory_mb, PROFILE, slo, BERT.max_batch)


def split(needs: list[ModelNeed], load_s: float, spill: float | None = None, **kw: float):
    costs = {n.name: LoadCost(load_s, 0.015, spill) for n in needs}
    mean = {n.name: n.rate_rps for n in needs}
    return split_cached(
        needs,
        costs,
        mean,
        protect_s=kw.get("protect_s", 2.0),
        memory_usd_per_mb_s=kw.get("memory_usd_per_mb_s", 1e-6),
        allowance_share=kw.get("allowance_share", 0.5),
        memory_limit_mb=kw.get("memory_limit_mb", 1000.0),
        cache=CACHE,
    )


def test_a_model_busy_enough_to_stay_resident_is_placed_the_rest_cached() -> None:
    """At r * (load + T(1) + protection) >= 1 a model is in memory anyway: placed; a rarer one
    whose load fits its deadline is left to the cache, its compute and memory in the share."""
    needs = [need("hot", 5.0), need("rare", 0.01), need("idle", 0.0)]
    placed, share = split(needs, load_s=0.3)
    assert [n.name for n in placed] == ["hot"]
    assert share.slot_mb == 800.0
    assert 0 < share.occupancy < 0.1
    assert share.memory_mb == 800.0 * 0.01 * (0.3 + 0.015 + 2.0)


def test_a_load_that_misses_the_deadline_is_taken_within_the_miss_allowance_only() -> None:
    """Loads of 3 s against a 1 s SLO: the rarest models are cached while their expected
    misses stay within half the allowance (5% of the fleet's rate), the others placed."""
    needs = [need("big", 0.3)] + [need(f"t{i}", 0.01 * (i + 1)) for i in range(5)]
    placed, _ = split(needs, load_s=3.0, protect_s=0.0)
    allowance = 0.5 * 0.05 * sum(n.rate_rps for n in needs)  # 0.01125 req/s
    cached = {n.name for n in needs} - {n.name for n in placed}
    assert cached == {"t0"}  # 0.01 * (1 + 0.03) fits; t0 + t1 do not
    assert 0.01 * 1.03 <= allowance < 0.01 * 1.03 + 0.02 * 1.06


def test_spilling_during_loads_is_chosen_where_cheaper_than_the_memory() -> None:
    needs = [need("rare", 0.001)]
    placed, _ = split(needs, load_s=3.0, spill=1e-5, protect_s=0.0, allowance_share=0.0)
    assert placed == []
    placed, _ = split(needs, load_s=3.0, spill=1.0, protect_s=0.0, allowance_share=0.0)
    assert [n.name for n in placed] == ["rare"]


share_st = st.builds(
    CacheShare, st.floats(0.0, 3.0), st.floats(0.0, 20000.0), st.sampled_from([0.0, 800.0])
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.floats(0.01, 200.0), min_size=0, max_size=20), share_st, st.integers(0, 3))
def test_the_reserve_is_on_every_instance_within_memory_and_compute(rates, share, running):
    """Every bin carries the cache's reserve and stays within memory and occupancy 1, and the
    bins hold the whole share (reserve-only instances where the placed models leave none)."""
    needs = [need(f"m{i:02d}", r) for i, r in enumerate(rates)]
    residents = [Resident(f"i-{k}", frozenset()) for k in range(running)]
    result = place(needs, residents, memory_limit_mb=LIMIT_MB, max_moves=4, cache=CACHE,
                   cached=share)  # fmt: skip
    for b in result.bins:
        assert b.memory_mb <= LIMIT_MB + 1e-6
        assert b.occupancy <= 1.0 + 1e-6
        assert b.reserve == bool(share)
    if share and not result.unplaced:
        n = len(result.bins)
        assert n >= math.ceil(share.occupancy - 1e-9)
        assert n * (LIMIT_MB - share.slot_mb) >= share.memory_mb - 1e-6
        assert all(b.kept for b in result.bins)


def test_a_cold_model_loads_on_the_least_busy_instance_in_time_else_the_soonest() -> None:
    a = LoadOption("a", placed=False, ready_s=1.0, fits=True, busy=5.0)
    b = LoadOption("b", placed=False, ready_s=1.5, fits=True, busy=1.0)
    c = LoadOption("c", placed=False, ready_s=0.5, fits=False, busy=0.0)
    assert load_target([a, b, c]) == b
    late = [LoadOption(o.instance_id, o.placed, o.ready_s, False, o.busy) for o in (a, b, c)]
    assert load_target(late) == late[2]
    placed = LoadOption("d", placed=True, ready_s=9.0, fits=False, busy=9.0)
    assert load_target([a, b, placed]) == placed
    # Among the placed, one with room before a full one (it would evict, or refuse for models
    # in rotation), whatever their load times; with room nowhere, the rule above decides.
    full = LoadOption("e", placed=True, ready_s=0.1, fits=True, busy=0.0, room=False)
    roomy = LoadOption("f", placed=True, ready_s=3.0, fits=False, busy=4.0)
    assert load_target([full, roomy]) == roomy
    assert load_target([full, dataclasses.replace(roomy, room=False)]) == full
    assert load_target([]) is None


def test_the_miss_allowance_buys_memory_only_while_memory_sizes_the_fleet() -> None:
    """The same rare models on instances whose memory holds them all with room to spare: the
    fleet is sized by compute, so no request is made late to save memory."""
    needs = [need("big", 0.3)] + [need(f"t{i}", 0.01 * (i + 1)) for i in range(5)]
    placed, share = split(needs, load_s=3.0, protect_s=0.0, memory_limit_mb=1e7)
    assert len(placed) == len(needs) and not share
