"""A plan's actions, and what they mean for a fleet: the one interpretation the control loop
and the simulator both carry out (SkyServe's controller carries out its autoscaler's decisions
the same way: the policy says what, the edge only does it).

The semantics are the live system's:
- `Launch`: buy the offering for the model (for an instance of a many-model fleet: to serve
  `models`, with `placed` the models its placement puts there, loaded once it runs);
- `Drain` of a RUNNING instance: it takes no new requests and finishes its queue (the planner
  terminates it once `drain_s` has passed); of a PENDING one: terminate it (it holds no queue);
  of one already draining or gone: nothing;
- `Terminate` of a live instance: terminate it now; of one already gone: nothing.
Operations come in the plan's order (retirements of interrupted and drained instances first,
then launches, then releases), one per instance. A launch the cloud refuses for capacity ends
the launches of that apply: the caller records the refusal in the planner state and re-plans,
and the re-plan decides the rest without that pool.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from mark.core.types import Decision, Instance, InstanceState, Offering
from provisioner.policy.snapshot import PlannerState

__all__ = [
    "Launch",
    "Drain",
    "Terminate",
    "Action",
    "Plan",
    "OperationKind",
    "FleetOperation",
    "fleet_operations",
]


@dataclass(frozen=True, slots=True)
class Launch:
    model: str
    offering: Offering
    reason: str
    expected_cost_usd: float
    capacity_rps: float = 0.0
    models: tuple[str, ...] = ()  # what the instance serves, when more than `model`
    placed: tuple[str, ...] | None = None  # a many-model placement's models for it

    @property
    def serves(self) -> tuple[str, ...]:
        return self.models or (self.model,)


@dataclass(frozen=True, slots=True)
class Drain:
    instance_id: str
    model: str
    reason: str


@dataclass(frozen=True, slots=True)
class Terminate:
    instance_id: str
    model: str
    reason: str


Action = Launch | Drain | Terminate


@dataclass(frozen=True, slots=True)
class Plan:
    """One tick's result: actions and the decisions that explain them, the state for the next
    tick, the launches deferred to it, and per model how many serverless functions to keep
    warm (`provisioner.policy.prewarm`; empty without a serverless pool)."""

    actions: tuple[Action, ...]
    decisions: tuple[Decision, ...]
    state: PlannerState
    deferred: tuple[Launch, ...] = ()
    warm_functions: Mapping[str, int] = field(default_factory=dict)


class OperationKind(StrEnum):
    LAUNCH = "launch"
    DRAIN = "drain"  # RUNNING -> DRAINING: no new requests, the queue finishes
    TERMINATE = "terminate"


@dataclass(frozen=True, slots=True)
class FleetOperation:
    """One thing to do to the fleet: `instance` is None for a launch (`action` says what)."""

    kind: OperationKind
    action: Action
    instance: Instance | None = None


def fleet_operations(
    actions: Iterable[Action], instances: Mapping[str, Instance]
) -> list[FleetOperation]:
    """The operations that carry out `actions` on the fleet `instances` (by id), by the rules
    of the module docstring."""
    out: list[FleetOperation] = []
    touched: set[str] = set()
    for action in actions:
        if isinstance(action, Launch):
            out.append(FleetOperation(OperationKind.LAUNCH, action))
            continue
        inst = instances.get(action.instance_id)
        if inst is None or not inst.live or inst.id in touched:
            continue
        if isinstance(action, Drain):
            if inst.state == InstanceState.RUNNING:
                kind = OperationKind.DRAIN
            elif inst.state == InstanceState.PENDING:
                kind = OperationKind.TERMINATE
            else:
                continue  # already draining
        else:
            kind = OperationKind.TERMINATE
        touched.add(inst.id)
        out.append(FleetOperation(kind, action, inst))
    return out
