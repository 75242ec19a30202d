"""What the simulator's data plane does when demand outruns the fleet and the serverless pool is
slower than the SLO (nasnet's and opennmt's case), and what a run's first decision sees."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from mark.apps.simulator.engine import SimSettings, run_policy
from mark.apps.simulator.policies.base import PolicyContext, PolicyDecision
from mark.apps.simulator.runner import Scenario, simulate
from mark.apps.simulator.workload import Arrivals
from mark.core.catalog import load_catalog
from mark.core.errors import InvalidValue
from mark.core.types import Market
from provisioner.policy.actions import Launch
from traces import Trace

CATALOG = load_catalog()
TYPE = "c5.large"
START_S = 1_700_000_000.0


@dataclass
class _Fixed:
    """`count` instances from the start and nothing else; records what each decision saw."""

    count: int
    name: str = "fixed"
    interval_s: float = 60.0
    spill: bool = True
    batching: bool = True
    interruptible: bool = False
    terminates_drained: bool = True
    seen: list[int] = field(default_factory=list)

    def initial_state(self) -> int:
        return 0

    def price_per_hour(self, offering: Any) -> float:
        return float(offering.price_per_hour)

    def decide(self, ctx: PolicyContext, state: Any) -> PolicyDecision:
        self.seen.append(int(ctx.metrics.arrivals.size))
        if state:
            return PolicyDecision((), state)
        offering = ctx.offerings.cheapest(TYPE, Market.ON_DEMAND)
        assert offering is not None
        launches = tuple(Launch(ctx.model.name, offering, "fixed", 0.0) for _ in range(self.count))
        return PolicyDecision(launches, 1)


def _model() -> Any:
    model = CATALOG.model("inception-v3").to_model()
    return model.model_copy(update={"profiles": {TYPE: model.profiles[TYPE]}})


def _trace(rps: float, minutes: int) -> Trace:
    times = START_S + 60.0 * np.arange(minutes)
    return Trace(timestamps_s=times, counts=np.full(minutes, rps * 60.0), bucket_s=60.0)


def test_an_overload_misses_its_excess_not_its_whole_demand() -> None:
    model = _model()
    settings = SimSettings(types=(TYPE,), interruption_rate_per_hour=0.0)
    profile = model.profiles[TYPE]
    # the most one instance finishes in a second with a batch that fits the SLO
    ceiling = max(b * 1000.0 / t for b, t in profile.latency_ms.items() if t < model.slo.latency_ms)
    fleet = 4
    demand = 2.0 * fleet * ceiling  # half of it beyond anything the fleet can serve in time
    run = run_policy(
        _Fixed(fleet),
        model,
        Arrivals(_trace(demand, 5), seed=5),
        CATALOG,
        settings,
        serverless_latency_ms=3.0 * model.slo.latency_ms,  # the pool answers, but late
        serverless_memory_mb=3008,
    )
    within = float(np.mean(run.latencies_ms <= model.slo.latency_ms))
    # Kept in line, the excess would hold everything behind it: the queue grows all run and
    # almost nothing meets the SLO. Spilled, it leaves the queue at the deadline's length, and
    # what the fleet serves (about half the demand, less the batching it gives up) is in time.
    assert run.failed == 0
    # (measured: 34% within the SLO, 1% without the overload spill)
    assert run.spilled >= 0.3 * run.requests
    assert within >= 0.25, within
    assert run.series["missed"][-1] == pytest.approx(
        np.count_nonzero(run.latencies_ms > model.slo.latency_ms), rel=0.02
    )


def test_the_first_decision_sees_the_history_before_the_window() -> None:
    model = _model()
    settings = SimSettings(types=(TYPE,), interruption_rate_per_hour=0.0)
    trace = _trace(5.0, 3)
    history = Trace(
        timestamps_s=START_S - 60.0 * np.arange(10, 0, -1),
        counts=np.full(10, 120.0),
        bucket_s=60.0,
    )
    policy = _Fixed(1)
    per_bucket = round(60.0 / settings.window_s)
    run_policy(
        policy,
        model,
        Arrivals(trace, seed=1),
        CATALOG,
        settings,
        serverless_latency_ms=0.0,
        serverless_memory_mb=3008,
        history=history.counts,
    )
    assert policy.seen[0] == 10 * per_bucket  # ten buckets of history, in the engine's windows
    # A history that does not end where the trace starts is refused, not silently shifted.
    early = Trace(history.timestamps_s - 60.0, history.counts, 60.0)
    with pytest.raises(InvalidValue, match="must end where the trace starts"):
        simulate(Scenario(model=model, trace=trace, catalog=CATALOG, history=early), ["static"])
