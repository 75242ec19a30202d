"""The simulator carries out a plan's actions as the control loop does
(`provisioner.policy.actions.fleet_operations`): a drained instance finishes its queue, a
terminated one stops now and what waits on it is lost, as when the cloud takes it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from mark.apps.simulator.engine import SimSettings, run_policy
from mark.apps.simulator.policies.base import PolicyContext, PolicyDecision
from mark.apps.simulator.workload import Arrivals
from mark.core.catalog import load_catalog
from mark.core.types import Market, Offering
from provisioner.policy.actions import Action, Drain, Launch, Terminate
from traces import Trace

CATALOG = load_catalog()
TYPE = "c5.large"


@dataclass(frozen=True)
class _Scripted:
    """Two instances at the start; after a minute one is drained and the other terminated,
    and the drained one is terminated a minute later."""

    name: str = "scripted"
    interval_s: float = 60.0
    spill: bool = False
    batching: bool = True
    interruptible: bool = False
    terminates_drained: bool = True

    def initial_state(self) -> int:
        return 0

    def price_per_hour(self, offering: Offering) -> float:
        return offering.price_per_hour

    def decide(self, ctx: PolicyContext, state: Any) -> PolicyDecision:
        model = ctx.model.name
        ids = sorted(i.id for i in ctx.instances)
        actions: tuple[Action, ...] = ()
        if state == 0:
            offering = ctx.offerings.cheapest(TYPE, Market.ON_DEMAND)
            assert offering is not None
            actions = (Launch(model, offering, "a", 0.0), Launch(model, offering, "b", 0.0))
        elif state == 1:
            actions = (Drain(ids[0], model, "drain"), Terminate(ids[1], model, "now"))
        elif state == 2 and ids:
            actions = (Terminate(ids[0], model, "drained"),)
        return PolicyDecision(actions, state + 1)


def test_terminate_is_now_and_drain_finishes_the_queue() -> None:
    model = CATALOG.model("inception-v3").to_model()
    model = model.model_copy(update={"profiles": {TYPE: model.profiles[TYPE]}})
    # Far more than two instances serve: queues build, so a termination finds a backlog.
    times = np.arange(0.0, 240.0, 60.0) + 1_700_000_000.0
    trace = Trace(timestamps_s=times, counts=np.full(times.size, 60.0 * 60.0), bucket_s=60.0)
    run = run_policy(
        _Scripted(),
        model,
        Arrivals(trace, seed=3),
        CATALOG,
        SimSettings(types=(TYPE,), interruption_rate_per_hour=0.0),
        serverless_latency_ms=0.0,
        serverless_memory_mb=3008,
    )
    # From +60 s nothing takes requests (one draining, one gone): the last three buckets'
    # arrivals fail, and so does the backlog the terminated instance held. A Terminate that
    # drained first would have served that backlog.
    assert run.failed > 3 * 3600
    # Billed from the start: one to the termination at +60 s (not to the end of its queue),
    # the drained one to +120 s.
    assert run.instance_hours[TYPE] == pytest.approx((60.0 + 120.0) / 3600.0)
