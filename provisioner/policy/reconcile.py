"""Reconciliation of the database's fleet with the cloud's, a pure function run at start-up and
every tick so that no paid instance is left running untracked, whatever moment the control plane
crashed at.

The crash windows it closes:
- after the cloud launched an instance and before the database recorded it: the cloud lists a
  Mark-tagged instance the database does not know. It is terminated once older than the grace
  period (younger ones may be a sibling control plane's launch whose row is not written yet);
- after the database recorded a termination and before the cloud call: the database says
  terminated, the cloud still runs it. It is terminated at once;
- an instance that disappeared while nobody watched (spot reclaim during the crash, manual
  termination): the database says live, the cloud no longer lists it. It is marked terminated,
  again after the grace period, because EC2's DescribeInstances is eventually consistent and may
  not list an instance that RunInstances returned a moment ago;
- the database and the cloud both know it: the instance is adopted, and the record takes what the
  cloud learnt meanwhile (pending -> running, its endpoint).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from mark.core.types import Instance, InstanceState

__all__ = ["ReconcileKind", "ReconcileAction", "reconcile"]


class ReconcileKind(StrEnum):
    ADOPT = "adopt"
    TERMINATE_UNTRACKED = "terminate-untracked"
    MARK_VANISHED = "mark-vanished"


@dataclass(frozen=True, slots=True)
class ReconcileAction:
    """One step for the control loop: ADOPT saves `instance` (the merged record);
    TERMINATE_UNTRACKED terminates `instance.id` through the provider (and saves it terminated
    when the database had a row); MARK_VANISHED saves `instance` (already terminated)."""

    kind: ReconcileKind
    instance: Instance
    reason: str


def _adopted(record: Instance, seen: Instance) -> Instance | None:
    """The database record updated with what the cloud knows, or None when nothing changed.
    The cloud never knows about draining (a Mark state), so only pending -> running and the
    endpoint travel from the cloud to the record."""
    changes: dict[str, object] = {}
    if seen.endpoint and seen.endpoint != record.endpoint:
        changes["endpoint"] = seen.endpoint
    if record.state == InstanceState.PENDING and seen.state == InstanceState.RUNNING:
        at_s = seen.running_at_s if seen.running_at_s is not None else seen.launched_at_s
        return record.transition(InstanceState.RUNNING, at_s, **changes)
    return record.model_copy(update=changes) if changes else None


def reconcile(
    db_instances: Sequence[Instance],
    cloud_instances: Sequence[Instance],
    now_s: float,
    grace_s: float,
) -> list[ReconcileAction]:
    """Actions that make the database and the cloud agree.

    `db_instances` may include terminated rows (they matter when the cloud still runs one);
    `cloud_instances` is the provider's `list()`: its live, Mark-tagged instances. The result is
    ordered by instance id, so that the same inputs always give the same actions.
    """
    records = {i.id: i for i in db_instances}
    seen = {i.id: i for i in cloud_instances if i.live}
    actions: list[ReconcileAction] = []
    for instance_id in sorted(records.keys() | seen.keys()):
        record = records.get(instance_id)
        cloud = seen.get(instance_id)
        if record is not None and cloud is not None:
            if not record.live:
                actions.append(
                    ReconcileAction(
                        ReconcileKind.TERMINATE_UNTRACKED,
                        record,
                        "recorded terminated but the cloud still runs it",
                    )
                )
            elif (merged := _adopted(record, cloud)) is not None:
                actions.append(
                    ReconcileAction(ReconcileKind.ADOPT, merged, f"cloud reports {cloud.state}")
                )
        elif cloud is not None:
            age_s = now_s - cloud.launched_at_s
            if age_s >= grace_s:
                actions.append(
                    ReconcileAction(
                        ReconcileKind.TERMINATE_UNTRACKED,
                        cloud,
                        f"Mark-tagged, no record, up {age_s:.0f} s (grace {grace_s:.0f} s)",
                    )
                )
        elif record is not None and record.live and now_s - record.launched_at_s >= grace_s:
            actions.append(
                ReconcileAction(
                    ReconcileKind.MARK_VANISHED,
                    record.transition(InstanceState.TERMINATED, now_s),
                    "the cloud no longer lists it",
                )
            )
    return actions
