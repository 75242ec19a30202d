"""Reconciliation (provisioner/policy/reconcile.py): each crash window, and properties over
fleets."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mark.core.types import Instance, InstanceState, Market, Offering
from provisioner.policy.reconcile import ReconcileKind, reconcile

OFFER = Offering(
    instance_type="c5.large", zone="us-east-1a", market=Market.SPOT, price_per_hour=0.034
)
GRACE_S = 300.0
NOW_S = 10_000.0


def inst(
    instance_id: str,
    state: InstanceState = InstanceState.RUNNING,
    *,
    launched_at_s: float = 0.0,
    endpoint: str | None = None,
) -> Instance:
    base = Instance(
        id=instance_id,
        offering=OFFER,
        models=("m",),
        launched_at_s=launched_at_s,
        endpoint=endpoint,
    )
    if state == InstanceState.PENDING:
        return base
    running = base.transition(InstanceState.RUNNING, launched_at_s + 60)
    return running if state == InstanceState.RUNNING else running.transition(state, NOW_S - 1)


def kinds(actions: list) -> dict[str, ReconcileKind]:
    return {a.instance.id: a.kind for a in actions}


def test_untracked_instance_is_terminated_only_after_the_grace_period() -> None:
    old = inst("i-old", launched_at_s=NOW_S - GRACE_S - 1)
    young = inst("i-young", launched_at_s=NOW_S - 10)
    actions = reconcile([], [old, young], NOW_S, GRACE_S)
    assert kinds(actions) == {"i-old": ReconcileKind.TERMINATE_UNTRACKED}


def test_recorded_terminated_but_still_running_is_terminated_at_once() -> None:
    record = inst("i-1", InstanceState.TERMINATED, launched_at_s=NOW_S - 5)
    cloud = inst("i-1", launched_at_s=NOW_S - 5)
    assert kinds(reconcile([record], [cloud], NOW_S, GRACE_S)) == {
        "i-1": ReconcileKind.TERMINATE_UNTRACKED
    }


def test_vanished_instance_is_marked_terminated_at_now() -> None:
    record = inst("i-2", launched_at_s=0.0)
    (action,) = reconcile([record], [], NOW_S, GRACE_S)
    assert action.kind == ReconcileKind.MARK_VANISHED
    assert action.instance.state == InstanceState.TERMINATED
    assert action.instance.terminated_at_s == NOW_S


def test_just_launched_instance_missing_from_an_eventually_consistent_list_is_kept() -> None:
    assert reconcile([inst("i-3", launched_at_s=NOW_S - 2)], [], NOW_S, GRACE_S) == []


def test_adopt_takes_running_state_and_endpoint_from_the_cloud() -> None:
    record = inst("i-4", InstanceState.PENDING, launched_at_s=NOW_S - 100)
    cloud = inst("i-4", launched_at_s=NOW_S - 100, endpoint="http://10.0.0.4:8080")
    (action,) = reconcile([record], [cloud], NOW_S, GRACE_S)
    assert action.kind == ReconcileKind.ADOPT
    assert action.instance.state == InstanceState.RUNNING
    assert action.instance.endpoint == "http://10.0.0.4:8080"


def test_agreeing_fleets_need_nothing_and_draining_stays_draining() -> None:
    draining = inst("i-5", InstanceState.DRAINING)
    running = inst("i-6")
    assert reconcile([draining, running], [inst("i-5"), inst("i-6")], NOW_S, GRACE_S) == []


ids = st.sampled_from([f"i-{n}" for n in range(12)])
states = st.sampled_from(list(InstanceState))
ages = st.floats(min_value=0, max_value=2 * GRACE_S)


@settings(derandomize=True, deadline=None)
@given(st.dictionaries(ids, st.tuples(states, ages)), st.dictionaries(ids, ages))
def test_after_applying_no_old_instance_runs_untracked(db: dict, cloud: dict) -> None:
    """Apply the actions to both sides: every cloud instance older than the grace period then
    has a live record, and every live record older than that is in the cloud."""
    records = [inst(i, s, launched_at_s=NOW_S - age) for i, (s, age) in db.items()]
    seen = [inst(i, launched_at_s=NOW_S - age) for i, age in cloud.items()]
    actions = reconcile(records, seen, NOW_S, GRACE_S)
    by_id = {r.id: r for r in records}
    running = {s.id: s for s in seen}
    for action in actions:
        if action.kind == ReconcileKind.TERMINATE_UNTRACKED:
            running.pop(action.instance.id)
        else:
            by_id[action.instance.id] = action.instance
    for instance in running.values():
        if NOW_S - instance.launched_at_s >= GRACE_S:
            assert instance.id in by_id and by_id[instance.id].live
    for record in by_id.values():
        if record.live and NOW_S - record.launched_at_s >= GRACE_S:
            assert record.id in running
    assert len({a.instance.id for a in actions}) == len(actions)
