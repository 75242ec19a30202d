"""The moves that carry out a many-model placement (provisioner/policy/placement_steps.py):
properties over random fleets (a model with traffic keeps an instance serving it through every
step, so a moving model is loaded where it goes before it leaves where it was; moves within the
budget; loads within memory), repeated steps reaching a placement from any residents, scale to
zero, and the routing rule; and the fleet choices around `place`
(provisioner/policy/placement_fleet.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mark.core.catalog import load_catalog
from mark.core.types import Instance, Market, Offering
from provisioner.policy.capacity import CapacityCache
from provisioner.policy.offerings import Offerings
from provisioner.policy.placement import ModelNeed, Resident, place
from provisioner.policy.placement_fleet import (
    TypeOption,
    bin_offerings,
    cheapest_type,
    placement_rate,
    replan,
)
from provisioner.policy.placement_steps import Member, PlacedFleet, Steps, route_targets, steps

DRAIN_S = 10.0
MODELS = tuple(f"m{i}" for i in range(6))
CACHE = CapacityCache()
BERT = load_catalog().model("bert-base").to_model()
PROFILE = BERT.profiles["inf1.xlarge"]


def _serving(fleet: PlacedFleet, done: Steps | None = None) -> dict[str, set[str]]:
    """Instances the front ends may route each model to (running, holding it, not marked), as
    `done` leaves them."""
    unloaded = set(done.unloads) if done else set()
    retired = set(done.retire) if done else set()
    marks = {(m.instance_id, x) for m in fleet.members for x in m.draining}
    if done:
        marks = (marks - set(done.cleared)) | set(done.drains)
    out: dict[str, set[str]] = {}
    for m in fleet.members:
        if not m.running or m.instance_id in retired:
            continue
        for x in m.held:
            if (m.instance_id, x) not in unloaded | marks:
                out.setdefault(x, set()).add(m.instance_id)
    return out


@st.composite
def fleets(draw: st.DrawFn) -> tuple[PlacedFleet, float, int]:
    memory = {x: float(draw(st.integers(1, 3))) for x in MODELS}
    limit = 6.0
    rates = {x: draw(st.sampled_from([0.0, 0.0, 1.0, 5.0, 20.0])) for x in MODELS}
    now = 100.0
    members = []
    for k in range(draw(st.integers(1, 4))):
        running = draw(st.booleans()) or k == 0
        held: set[str] = set()
        used = 0.0
        for x in MODELS:
            if running and draw(st.booleans()) and used + memory[x] <= limit:
                held.add(x)
                used += memory[x]
        loading = {x for x in MODELS if x not in held and draw(st.integers(0, 5)) == 0}
        placed = {x for x in MODELS if rates[x] > 0 and draw(st.integers(0, 2)) == 0}
        draining = {
            x: now - draw(st.sampled_from([0.0, 5.0, 30.0]))
            for x in held
            if draw(st.integers(0, 3)) == 0
        }
        members.append(
            Member(
                f"i{k}", running, frozenset(placed), frozenset(held), frozenset(loading), draining
            )
        )
    for_room = {
        (m.instance_id, x) for m in members for x in m.held - m.placed if draw(st.booleans())
    }
    fleet = PlacedFleet(tuple(members), rates, memory, limit, frozenset(for_room))
    return fleet, now, draw(st.integers(0, 6))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleets())
def test_a_model_with_traffic_keeps_an_instance_serving_it_through_every_step(
    case: tuple[PlacedFleet, float, int],
) -> None:
    fleet, now, budget = case
    done = steps(fleet, now_s=now, drain_s=DRAIN_S, budget=budget)
    before, after = _serving(fleet), _serving(fleet, done)
    for x, rate in fleet.rates.items():
        if rate <= 0:
            continue
        held = any(m.running and x in m.held for m in fleet.members)
        if before.get(x) or held:
            assert after.get(x), f"{x} ({rate} rps) left without an instance serving it: {done}"
    # a move is never an unload where the model is being loaded elsewhere for it
    loaded = {x for _, x in done.loads}
    for iid, x in done.unloads + done.drains:
        if fleet.rates.get(x, 0.0) > 0:
            assert after.get(x, set()) - {iid}, (iid, x)
        assert x not in loaded or after.get(x)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleets())
def test_moves_stay_within_the_budget_and_loads_within_memory(
    case: tuple[PlacedFleet, float, int],
) -> None:
    fleet, now, budget = case
    done = steps(fleet, now_s=now, drain_s=DRAIN_S, budget=budget)
    by_id = {m.instance_id: m for m in fleet.members}
    filling = sum(1 for iid, _ in done.loads if not by_id[iid].held and not by_id[iid].loading)
    assert done.moves == len(done.drains) + len(done.loads) - filling <= budget
    for m in fleet.members:
        mine = {x for iid, x in done.loads if iid == m.instance_id}
        assert not mine & (m.held | m.loading), "a load of what is there or on its way"
        assert mine <= m.placed and (not mine or m.running)
        gone = {x for iid, x in done.unloads if iid == m.instance_id}
        after = sum(fleet.memory_mb[x] for x in (m.held - gone) | m.loading | mine)
        before = sum(fleet.memory_mb[x] for x in m.held | m.loading)
        assert after <= max(before, fleet.memory_limit_mb) + 1e-9
        for x in gone:  # unloaded only after a whole drain, from where it is not placed
            assert x not in m.placed and now - m.draining[x] >= DRAIN_S
    for iid, x in done.drains:
        assert x not in by_id[iid].placed and x not in by_id[iid].draining


def _carry_out(fleet: PlacedFleet, done: Steps, now: float) -> PlacedFleet:
    """What the workers and the control loop make of `done` by the next step: unloads and
    loads complete, marks set and cleared, retired instances gone."""
    members = []
    for m in fleet.members:
        if m.instance_id in done.retire:
            continue
        iid = m.instance_id
        held = (m.held - {x for i, x in done.unloads if i == iid}) | m.loading
        held |= {x for i, x in done.loads if i == iid}
        draining = {x: t for x, t in m.draining.items() if (iid, x) not in done.cleared}
        draining |= {x: now for i, x in done.drains if i == iid}
        members.append(
            dataclasses.replace(m, held=frozenset(held), loading=frozenset(), draining=draining)
        )
    return dataclasses.replace(fleet, members=tuple(members))


def _need(name: str, rate: float, memory_mb: float) -> ModelNeed:
    return ModelNeed(name, rate, memory_mb, PROFILE, BERT.slo, BERT.max_batch)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.sampled_from([0.0, 0.5, 5.0, 60.0]), st.integers(1, 3)),
        min_size=2,
        max_size=10,
    ),
    st.integers(1, 4),
    st.randoms(use_true_random=False),
)
def test_repeated_steps_reach_the_placement_from_any_residents(raw, instances, rnd) -> None:
    limit = 6.0
    needs = [_need(f"m{i}", r, float(mb)) for i, (r, mb) in enumerate(raw)]
    memory = {n.name: n.memory_mb for n in needs}
    residents = []
    for k in range(instances):
        held, used = set(), 0.0
        for n in needs:
            if rnd.random() < 0.4 and used + n.memory_mb <= limit:
                held.add(n.name)
                used += n.memory_mb
        residents.append(Resident(f"i{k}", frozenset(held)))
    placement = place(needs, residents, memory_limit_mb=limit, max_moves=100, cache=CACHE)
    bins = {b.instance_id or f"new{k}": frozenset(b.rates) for k, b in enumerate(placement.bins)}
    held_now = {r.instance_id: r.models for r in residents}
    fleet = PlacedFleet(
        tuple(Member(i, True, placed, held_now.get(i, frozenset())) for i, placed in bins.items()),
        {n.name: n.rate_rps for n in needs},
        memory,
        limit,
        frozenset(placement.unload),
    )
    now = 0.0
    for _ in range(30):
        done = steps(fleet, now_s=now, drain_s=DRAIN_S, budget=100)
        before = _serving(fleet)
        if not done and not any(m.draining for m in fleet.members):
            break
        after = _serving(fleet, done)
        for n in needs:
            assert n.rate_rps <= 0 or not before.get(n.name) or after.get(n.name)
        fleet = _carry_out(fleet, done, now)
        now += DRAIN_S / 2
    else:
        raise AssertionError(f"still moving after 30 steps: {done}")
    for m in fleet.members:
        assert m.placed <= m.held, (m, placement)
        assert not m.draining
        assert sum(memory[x] for x in m.held) <= limit + 1e-9
    for n in needs:
        if n.rate_rps <= 0:
            assert not any(n.name in m.held for m in fleet.members), "not scaled to zero"
    assert all(m.placed for m in fleet.members), "an instance with nothing placed stayed"


def _member(iid: str, placed: set[str], held: set[str], **kw: object) -> Member:
    return Member(iid, True, frozenset(placed), frozenset(held), **kw)  # type: ignore[arg-type]


def _fleet(members: list[Member], rates: Mapping[str, float], **kw: object) -> PlacedFleet:
    return PlacedFleet(tuple(members), rates, {x: 1.0 for x in rates}, 4.0, **kw)  # type: ignore[arg-type]


def test_a_moving_model_is_loaded_where_it_goes_and_drained_where_it_was_only_then() -> None:
    rates = {"hot": 10.0, "cold": 1.0}
    # hot leaves a (placed on b only); b must make room by draining cold, served on c
    a = _member("a", {"cold"}, {"hot", "cold"})
    b = _member("b", {"hot"}, {"cold", "x1", "x2", "x3"})
    c = _member("c", {"cold"}, {"cold"})
    fleet = _fleet(
        [a, b, c], {**rates, "x1": 1.0, "x2": 1.0, "x3": 1.0}, for_room=frozenset({("b", "cold")})
    )
    first = steps(fleet, now_s=0.0, drain_s=DRAIN_S, budget=10)
    assert first.drains == (("b", "cold"),) and not first.loads  # b is full until cold leaves
    assert ("a", "hot") not in first.drains  # a still serves hot: nothing else holds it
    b = dataclasses.replace(b, draining={"cold": 0.0})
    second = steps(
        _fleet([a, b, c], fleet.rates, for_room=fleet.for_room),
        now_s=DRAIN_S,
        drain_s=DRAIN_S,
        budget=10,
    )
    assert second.unloads == (("b", "cold"),) and second.loads == (("b", "hot"),)
    assert not second.drains  # hot is not on b yet: a keeps it
    b = dataclasses.replace(b, held=frozenset({"hot", "x1", "x2", "x3"}), draining={"cold": 0.0})
    third = steps(_fleet([a, b, c], fleet.rates), now_s=2 * DRAIN_S, drain_s=DRAIN_S, budget=10)
    assert third.cleared == (("b", "cold"),)
    # hot on b now serves; a's copy idles there, kept until its memory is needed
    assert not third.drains and not third.unloads


def test_a_model_without_traffic_is_drained_and_unloaded_everywhere_then_forgotten() -> None:
    rates = {"gone": 0.0, "kept": 2.0}
    members = [_member("a", {"kept"}, {"gone", "kept"}), _member("b", set(), {"gone"})]
    first = steps(_fleet(members, rates), now_s=0.0, drain_s=DRAIN_S, budget=10)
    assert first.drains == (("a", "gone"),) and first.retire == ("b",)  # b holds nothing needed
    members = [_member("a", {"kept"}, {"gone", "kept"}, draining={"gone": 0.0})]
    early = steps(_fleet(members, rates), now_s=DRAIN_S / 2, drain_s=DRAIN_S, budget=10)
    assert not early  # the front ends may still have requests for it queued there
    due = steps(_fleet(members, rates), now_s=DRAIN_S, drain_s=DRAIN_S, budget=0)
    assert due.unloads == (("a", "gone"),) and due.moves == 0  # the drain was the move
    members = [_member("a", {"kept"}, {"kept"}, draining={"gone": 0.0})]
    after = steps(_fleet(members, rates), now_s=DRAIN_S + 1, drain_s=DRAIN_S, budget=10)
    assert after.cleared == (("a", "gone"),)
    # traffic came back before the unload: the drain is cancelled, the copy serves again
    members = [_member("a", {"kept"}, {"gone", "kept"}, draining={"gone": 0.0})]
    back = steps(_fleet(members, {**rates, "gone": 3.0}), now_s=DRAIN_S, drain_s=DRAIN_S, budget=10)
    assert back.cleared == (("a", "gone"),) and not back.unloads


def test_a_new_instance_takes_its_whole_placement_outside_the_budget() -> None:
    rates = {x: 1.0 for x in ("p", "q", "r")}
    fresh = _member("new", {"p", "q", "r"}, set())
    done = steps(_fleet([fresh], rates), now_s=0.0, drain_s=DRAIN_S, budget=0)
    assert sorted(done.loads) == [("new", "p"), ("new", "q"), ("new", "r")] and done.moves == 0
    booting = Member("boot", False, frozenset({"p"}), frozenset())
    assert not steps(_fleet([booting], rates), now_s=0.0, drain_s=DRAIN_S, budget=5).loads
    started = _member("old", {"p", "q"}, {"p"})
    assert steps(_fleet([started], rates), now_s=0.0, drain_s=DRAIN_S, budget=0).loads == ()


def test_requests_go_where_the_model_is_placed_else_to_every_holder() -> None:
    assert route_targets({"a": True, "b": False}) == {"a"}
    assert route_targets({"a": False, "b": False}) == {"a", "b"}
    assert route_targets({}) == frozenset()


def test_fleet_choices_rate_type_and_offerings() -> None:
    assert placement_rate([0.01, 0.0], [0.5, 0.2], 60.0, 1.0) == 0.0  # under one request
    assert placement_rate([0.1, 0.0], [0.5, 0.2], 60.0, 1.0) == 0.5
    cheap = TypeOption("small", 1.0, 6.0, (_need("a", 5.0, 2.0), _need("b", 5.0, 2.0)))
    dear = TypeOption("big", 10.0, 60.0, cheap.needs)
    unpriced = TypeOption("none", None, 60.0, cheap.needs)
    chosen, why = cheapest_type([dear, unpriced, cheap], CACHE)
    assert chosen == "small" and why == ["none: no price"]
    zone = {"a": "us-east-1a", "b": "us-east-1b"}
    listed = [
        Offering(instance_type="t", zone=zone["a"], market=Market.ON_DEMAND, price_per_hour=1.0),
        Offering(instance_type="t", zone=zone["a"], market=Market.SPOT, price_per_hour=0.3),
        Offering(instance_type="t", zone=zone["b"], market=Market.SPOT, price_per_hour=0.4),
    ]
    got = bin_offerings(5, "t", Offerings.of(listed), [], spot=True, spot_max_share=0.8)
    assert [o.market for o in got].count(Market.SPOT) == 4  # floor(0.8 * 5)
    assert {o.zone for o in got if o.market == Market.SPOT} == set(zone.values())  # spread
    offered = Offerings.of(listed)
    running = [Instance(id="i", offering=listed[1], launched_at_s=0.0)]
    (second,) = bin_offerings(1, "t", offered, running, spot=True, spot_max_share=0.5)
    assert second.market == Market.ON_DEMAND  # half the fleet on spot already
    no_spot = bin_offerings(2, "t", offered, [], spot=False, spot_max_share=0.8)
    assert [o.market for o in no_spot] == [Market.ON_DEMAND] * 2


def test_replan_empties_the_least_occupied_instance_when_the_others_have_room() -> None:
    needs = [_need("a", 2.0, 1.0), _need("b", 2.0, 1.0)]
    residents = [Resident("i1", frozenset({"a"})), Resident("i2", frozenset({"b"}))]
    kept = replan(needs, residents, memory_limit_mb=8.0, max_moves=5, cache=CACHE)
    assert [b.instance_id for b in kept.bins if b.replicas] == ["i1"] or [
        b.instance_id for b in kept.bins if b.replicas
    ] == ["i2"]
    assert kept.new_instances == 0 and len(kept.loads) == 1
