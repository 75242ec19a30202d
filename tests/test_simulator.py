"""The trace simulator: queueing against the M/D/c solution, determinism, the constant-rate
sanity claims and the issue's "done when" claims on a short shipped trace."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from mark.apps.simulator.engine import SimSettings, run_policy
from mark.apps.simulator.instance_queue import InstanceQueue
from mark.apps.simulator.policies.base import PolicyContext, PolicyDecision
from mark.apps.simulator.report import policy_summary
from mark.apps.simulator.runner import Scenario, simulate
from mark.apps.simulator.workload import Arrivals
from mark.core.catalog import load_catalog
from mark.core.types import Offering
from provisioner.policy.batching import BatchPlan
from provisioner.policy.planner import Drain, Launch
from provisioner.policy.queueing import mdc_wait_prob
from traces import Trace, read_trace, shipped_trace, write_trace

CATALOG = load_catalog()


def _scenario(trace: Trace, market: str = "ondemand", rate: float = 0.0) -> Scenario:
    entry = CATALOG.model("inception-v3")
    return Scenario(
        model=entry.to_model(),
        trace=trace,
        catalog=CATALOG,
        market=market,  # type: ignore[arg-type]
        settings=SimSettings(seed=7, interruption_rate_per_hour=rate),
        serverless_latency_ms=entry.serverless_latency_ms,
        serverless_memory_mb=entry.serverless_memory_mb,
        oracle_time_limit_s=20.0,
    )


def test_single_instance_waits_match_mdc() -> None:
    """One unbatched server at a fixed Poisson rate: the simulated waiting-time CDF matches
    mdc_wait_prob within 0.01 (absolute) at every checked wait, with 200k requests."""
    rng = np.random.default_rng(3)
    rate_rps, service_s = 3.5, 0.21
    arrivals = np.cumsum(rng.exponential(1 / rate_rps, 200_000))
    queue = InstanceQueue(servers=1, a_ms=0.0, c_ms=service_s * 1000.0)
    served = queue.flush_after(arrivals, BatchPlan(1, 0.0, service_s * 1000.0))
    waits_s = served.completion_s - served.arrival_s - service_s
    for t in (0.0, 0.1, 0.21, 0.4, 0.8, 1.5):
        simulated = float(np.mean(waits_s <= t + 1e-9))
        assert simulated == pytest.approx(mdc_wait_prob(rate_rps, service_s, 1, t), abs=0.01)


def test_two_servers_match_mdc() -> None:
    rng = np.random.default_rng(4)
    rate_rps, service_s = 8.0, 0.2
    arrivals = np.cumsum(rng.exponential(1 / rate_rps, 200_000))
    queue = InstanceQueue(servers=2, a_ms=0.0, c_ms=service_s * 1000.0)
    served = queue.flush_after(arrivals, BatchPlan(1, 0.0, service_s * 1000.0))
    waits_s = served.completion_s - served.arrival_s - service_s
    for t in (0.0, 0.1, 0.3, 0.6):
        simulated = float(np.mean(waits_s <= t + 1e-9))
        assert simulated == pytest.approx(mdc_wait_prob(rate_rps, service_s, 2, t), abs=0.01)


def test_constant_rate_every_policy_meets_slo_and_oracle_is_cheapest() -> None:
    n = 45
    trace = Trace(np.arange(n) * 60.0, np.full(n, 30.0 * 60.0), 60.0)
    scenario = _scenario(trace, market="mixed")
    runs = simulate(scenario, ["mark", "reactive", "queue", "skyserve", "static", "oracle"])
    rows = {r.name: policy_summary(r, scenario.model.slo) for r in runs}
    assert set(rows) == {
        "mark-ondemand",
        "mark-spot",
        "reactive",
        "queue",
        "skyserve",
        "static",
        "oracle",
    }
    for name, row in rows.items():
        assert row["requests"] == 81_000, name
        assert row["slo_attainment"] >= scenario.model.slo.percentile, name
    oracle = rows.pop("oracle")["cost_usd"]
    for name, row in rows.items():
        assert oracle <= row["cost_usd"] + 1e-9, name


def test_done_when_claims_on_short_twitter_trace() -> None:
    """The issue's claims, on the first 3 hours of the shipped diurnal trace. MArk-ondemand is
    held to the on-demand oracle (same market); MArk-spot to SkyServe's SpotHedge."""
    full = read_trace(shipped_trace("twitter-like-diurnal-2d"))
    trace = Trace(full.timestamps_s[:180], full.counts[:180], full.bucket_s)
    scenario = _scenario(trace, market="mixed", rate=0.02)
    runs = simulate(scenario, ["mark", "skyserve"])
    rows = {r.name: policy_summary(r, scenario.model.slo) for r in runs}
    slo = scenario.model.slo.percentile
    od, spot, sky = (rows[k] for k in ("mark-ondemand", "mark-spot", "skyserve"))
    (od_oracle,) = simulate(_scenario(trace, market="ondemand"), ["oracle"])
    oracle = policy_summary(od_oracle, scenario.model.slo)
    assert od["slo_attainment"] >= slo
    assert od["cost_usd"] <= 1.25 * oracle["cost_usd"]
    assert spot["slo_attainment"] >= sky["slo_attainment"]
    assert spot["cost_usd"] < sky["cost_usd"]
    assert spot["cost_usd"] < od["cost_usd"]


def _cli(trace: Path, out: Path) -> dict[str, object]:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mark.apps.cli",
            "simulate",
            "--trace",
            str(trace),
            "--model",
            "lstm-ptb",
            "--policies",
            "mark,reactive",
            "--market",
            "spot",
            "--seed",
            "5",
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    data: dict[str, object] = json.loads((out / "summary.json").read_text())
    return data


def test_cli_same_seed_same_summary(tmp_path: Path) -> None:
    n = 20
    rates = 40.0 + 20.0 * np.sin(np.arange(n) / 3.0)
    path = tmp_path / "trace.csv"
    write_trace(path, Trace(np.arange(n) * 60.0, np.rint(rates * 60.0), 60.0))
    first = _cli(path, tmp_path / "a")
    second = _cli(path, tmp_path / "b")
    assert first == second
    policies = first["policies"]
    assert isinstance(policies, dict) and set(policies) == {"mark-spot", "reactive"}
    for row in policies.values():
        for key in (
            "cost_usd",
            "slo_attainment",
            "requests",
            "spilled",
            "p50_ms",
            "p99_ms",
            "instance_hours",
        ):
            assert key in row
    for png in ("cost.png", "instances.png", "capacity.png", "latency_ccdf.png", "attainment.png"):
        assert (tmp_path / "a" / png).stat().st_size > 0


@dataclass(frozen=True)
class _DrainOne:
    """Three instances from the start; at the second decision the first of them drains."""

    offering: Offering
    spill: bool = True
    name: str = "drain-one"
    interval_s: float = 60.0
    batching: bool = True
    interruptible: bool = False
    terminates_drained: bool = False

    def initial_state(self) -> int:
        return 0

    def decide(self, ctx: PolicyContext, state: int) -> PolicyDecision:
        if state == 0:
            launch = Launch(ctx.model.name, self.offering, "start", 0.0)
            return PolicyDecision((launch, launch, launch), 1)
        if state == 1:
            first = min(i.id for i in ctx.instances)
            return PolicyDecision((Drain(first, ctx.model.name, "scripted"),), 2)
        return PolicyDecision((), state)

    def price_per_hour(self, offering: Offering) -> float:
        return offering.price_per_hour


@pytest.mark.parametrize("spill", [True, False])
def test_a_draining_instance_spills_its_queue_as_the_front_end_does(spill: bool) -> None:
    """The front end spills what waits on a draining instance (reason "draining", while the
    pool has slots; `Fleet._remove_link`); so does the simulator, by the same walk. The pool is
    too slow for any deadline spill (5 s against a 600 ms SLO) and two instances keep running,
    so every spill of the run is one of the drained queue."""
    model = CATALOG.model("inception-v3").to_model()
    offering = next(
        o for o in CATALOG.offerings(("us-east-1a",), at_s=0.0, spot=False, types=("p2.xlarge",))
    )
    # 50/s per instance until the drain (a queue behind each busy instance), then 30/s each
    trace = Trace(np.arange(3) * 60.0, np.array([150.0, 60.0, 60.0]) * 60.0, 60.0)
    arrivals = Arrivals(trace, seed=7)
    settings = SimSettings(seed=7, types=("p2.xlarge",), interruption_rate_per_hour=0.0)
    run = run_policy(
        _DrainOne(offering, spill=spill),
        model,
        arrivals,
        CATALOG,
        settings,
        serverless_latency_ms=5000.0,
        serverless_memory_mb=3008,
    )
    assert run.requests == int(trace.counts.sum())
    if spill:
        assert run.spilled > 0
        assert int(np.sum(run.latencies_ms >= 5000.0)) == run.spilled
    else:
        assert run.spilled == 0


def test_interruptions_count_when_their_notice_comes_and_mark_loses_nothing() -> None:
    """An interruption happens at its two-minute notice: MArk-spot drains and replaces the
    instance then, so the reclaim finds it gone, yet the interruption happened and is counted
    (counting reclaims alone reported 0 interruptions for Mark however many it had)."""
    n = 90
    trace = Trace(np.arange(n) * 60.0, np.full(n, 30.0 * 60.0), 60.0)
    scenario = _scenario(trace, market="spot", rate=2.0)
    (run,) = simulate(scenario, ["mark"])
    row = policy_summary(run, scenario.model.slo)
    assert row["interrupted"] >= 1
    assert row["requests"] == n * 30 * 60
    assert run.failed == 0  # drained on the notice: no request was lost to a reclaim
