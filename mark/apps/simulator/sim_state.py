"""The state of one simulation run (mark/apps/simulator/engine.py): the run's settings, what a
policy run reports, one simulated instance, the latency recorder, and the engine's fields, which
the data plane (`sim_dataplane`) and the fleet's events (`engine`) both act on."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from mark.apps.simulator.instance_queue import InstanceQueue
from mark.apps.simulator.policies.base import Policy
from mark.apps.simulator.serverless_pool import ServerlessPool
from mark.apps.simulator.workload import Arrivals
from mark.core.catalog import Catalog
from mark.core.config import BatchingConfig, SpillConfig
from mark.core.types import Instance, Model, Profile
from provisioner.policy.capacity import CapacityCache

__all__ = [
    "ADVISOR",
    "PEAK",
    "SimSettings",
    "PolicyRun",
    "SimInstance",
    "Recorder",
    "FleetCounter",
    "PoolReclaim",
    "EngineState",
]

ADVISOR = "advisor"  # interruption rates per type from the catalog's Spot Advisor bands
PEAK = "peak"  # the pool reclaim at the start of the trace's busiest bucket


@dataclass(frozen=True, slots=True)
class SimSettings:
    """Knobs of one simulation run (the market's and the data plane's, not a policy's).

    `interruption_rate_per_hour`: spot interruption notices per instance-hour, independent per
    instance; a number holds for every type, `ADVISOR` takes each type's rate from its Spot
    Advisor band (`Catalog.interruption_rate_per_hour`: 6.8e-5 per hour for "<5%" up to
    5.5e-4 for ">20%"). The default, 0.02, is about 36 times the worst band's: a stress test
    that makes interruptions frequent enough to see in a few hours, not AWS's figures.

    `pool_reclaim_at_s`: a correlated event, seconds after the run's start (`PEAK`: the start
    of the trace's busiest bucket): every live spot instance of the one pool holding the most
    spot capacity then gets its notice at once and is reclaimed `interruption_notice_s` later;
    what happens from the notice for `pool_reclaim_window_s` is reported on its own.
    """

    zones: tuple[str, ...] = ("us-east-1a", "us-east-1b", "us-east-1c")
    types: tuple[str, ...] = ()
    window_s: float = 10.0
    seed: int = 0
    interruption_rate_per_hour: float | Literal["advisor"] = 0.02
    interruption_notice_s: float = 120.0
    pool_reclaim_at_s: float | Literal["peak"] | None = None
    pool_reclaim_window_s: float = 900.0
    batching: BatchingConfig = BatchingConfig()
    spill: SpillConfig = SpillConfig()
    serverless_concurrency: int = 1000
    serverless_keep_warm_s: float = 600.0

    def interruption_rate(self, catalog: Catalog, instance_type: str) -> float:
        """Interruptions per instance-hour of a spot instance of `instance_type`."""
        if self.interruption_rate_per_hour == ADVISOR:
            return catalog.interruption_rate_per_hour(instance_type)
        return float(self.interruption_rate_per_hour)


@dataclass
class PolicyRun:
    """What one policy did: totals for summary.json and the time series for the plots."""

    name: str
    latencies_ms: np.ndarray
    requests: int
    spilled: int
    failed: int
    instance_cost_usd: float
    serverless_cost_usd: float
    instance_hours: dict[str, float]
    series: dict[str, np.ndarray]
    type_series: dict[str, np.ndarray]
    extra: dict[str, Any] = field(default_factory=dict)
    # instances alive per window by (type, market): the fleet's mix, which the type series hides
    market_series: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)

    @property
    def cost_usd(self) -> float:
        return self.instance_cost_usd + self.serverless_cost_usd


@dataclass
class SimInstance:
    instance: Instance
    profile: Profile
    queue: InstanceQueue
    weight: float
    ready_s: float
    billed_from_s: float
    reclaim_s: float = math.inf
    notice_s: float = math.inf
    end_s: float | None = None  # scheduled termination (drain finished)
    price_per_hour: float = 0.0
    interruption_rate_per_hour: float = 0.0


class Recorder:
    """Latencies of every request (ms; inf for a failed one), in chunks, and how many of them
    missed `slo_ms` (so the run can say when the SLO was missed, not only how often)."""

    def __init__(self, slo_ms: float = math.inf) -> None:
        self.chunks: list[np.ndarray] = []
        self.count = 0
        self.slo_ms = slo_ms
        self.missed = 0

    def add(self, latency_ms: np.ndarray) -> None:
        if latency_ms.size:
            self.chunks.append(latency_ms.astype(np.float32))
            self.count += latency_ms.size
            self.missed += int(np.count_nonzero(latency_ms > self.slo_ms))

    def all(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)


class FleetCounter:
    """Instances alive in each window (pending, running or draining: all of them billed), by
    type and by (type, market), for the plots and the summary's peak and mean fleet."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.by_type: dict[str, np.ndarray] = {}
        self.by_market: dict[tuple[str, str], np.ndarray] = {}

    def count(self, step: int, fleet: Iterable[SimInstance]) -> None:
        for sim in fleet:
            offering = sim.instance.offering
            name = offering.instance_type
            self.by_type.setdefault(name, np.zeros(self.steps))[step] += 1
            key = (name, str(offering.market))
            self.by_market.setdefault(key, np.zeros(self.steps))[step] += 1


@dataclass
class PoolReclaim:
    """The correlated reclaim of one pool (`SimSettings.pool_reclaim_at_s`): when, which pool,
    how many instances, and the counters at the notice, from which the window's figures
    (requests, spilled, failed, SLO attainment from the notice to `window_end_s`) are taken."""

    notice_s: float
    window_end_s: float
    pool: str | None = None
    instances: int = 0
    fired: bool = False
    marks: tuple[int, int, int, int] = (0, 0, 0, 0)  # recorded, spilled, failed, chunks
    report: dict[str, Any] | None = None


@dataclass
class EngineState:
    """What one run of the engine holds: the policy, the workload and market, the fleet of
    simulated instances and the counters; the data plane and the fleet's events act on it."""

    policy: Policy
    model: Model
    arrivals: Arrivals
    catalog: Catalog
    settings: SimSettings
    cache: CapacityCache
    pool: ServerlessPool
    rng: np.random.Generator
    recorder: Recorder = field(default_factory=Recorder)
    fleet: dict[str, SimInstance] = field(default_factory=dict)
    done: list[SimInstance] = field(default_factory=list)
    interruptions: dict[str, float] = field(default_factory=dict)
    reclaimed: dict[str, float] = field(default_factory=dict)
    spilled: int = 0
    failed: int = 0
    interrupted: int = 0
    interruptions_expected: float = 0.0
    pool_reclaim: PoolReclaim | None = None
    serial: int = 0
    window_sojourn_s: float = 0.0
    pattern_cache: dict[tuple[float, ...], np.ndarray] = field(default_factory=dict)
    pattern_offset: int = 0
    threshold_cache: dict[tuple[int, float, float], float] = field(default_factory=dict)
