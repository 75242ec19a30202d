"""`simulate`: build the requested policies for a model and a trace, run each against the same
seeded arrivals, and collect their results (what `mark simulate` and bench/evaluation.py call).

Policy names: `mark` runs as `mark-ondemand` and/or `mark-spot` per the market (`mixed`: both);
`skyserve` uses spot unless the market is `ondemand`; the oracle may buy spot unless the market
is `ondemand`; `reactive`, `reactive-cpu`, `queue`, `queue-batch` and `static` are on-demand by
definition (their modules say which real deployment each one is).

The ablations are Mark with one part switched off through the config section the live system
reads for it (`ABLATIONS`), on spot unless the market is `ondemand` (so each compares with
`mark-spot` there): `mark-noforecast` plans for the last observed rate with no upper band,
`mark-nobatch` serves and sizes capacity unbatched, `mark-nospill` never spills, and
`mark-nospot` buys on-demand only, which is `mark-ondemand` under the ablation's name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from mark.apps.simulator.engine import PolicyRun, SimSettings, run_policy
from mark.apps.simulator.policies import (
    MarkPolicy,
    OraclePolicy,
    Policy,
    QueuePolicy,
    ReactivePolicy,
    SkyServePolicy,
    StaticPolicy,
    solve_oracle,
)
from mark.apps.simulator.policies.base import ceil_div, cheapest_type
from mark.apps.simulator.workload import Arrivals
from mark.core.catalog import Catalog
from mark.core.config import ForecastConfig, PlannerConfig
from mark.core.errors import InvalidValue
from mark.core.types import Market, Model
from provisioner.policy.capacity import CapacityCache
from provisioner.policy.offerings import Offerings
from provisioner.policy.snapshot import ServerlessTerms
from traces import Trace

__all__ = ["ABLATIONS", "POLICY_NAMES", "MarketChoice", "Scenario", "build_policies", "simulate"]

# Each ablation as the config updates that switch one part of Mark off, by config section.
ABLATIONS: dict[str, dict[str, dict[str, Any]]] = {
    "mark-noforecast": {"forecast": {"predictor": "last", "upper_band": False}},
    "mark-nobatch": {"batching": {"enabled": False}},
    "mark-nospill": {"spill": {"enabled": False}},
    "mark-nospot": {"planner": {"spot": False}},
}
POLICY_NAMES = (
    "mark",
    *ABLATIONS,
    "reactive",
    "reactive-cpu",
    "queue",
    "queue-batch",
    "skyserve",
    "static",
    "oracle",
)
# The paper's SageMaker baseline ran ml.c5 endpoints.
_PAPER_CPU_FAMILY = "c5."
MarketChoice = Literal["ondemand", "spot", "mixed"]


@dataclass(frozen=True)
class Scenario:
    """One model on one trace in one market: everything the policies are built from."""

    model: Model
    trace: Trace
    catalog: Catalog
    market: MarketChoice = "ondemand"
    settings: SimSettings = SimSettings()
    planner: PlannerConfig = PlannerConfig()
    forecast: ForecastConfig = ForecastConfig()
    serverless_latency_ms: float = 0.0
    serverless_memory_mb: int = 3008
    oracle_time_limit_s: float = 60.0
    # The traffic before the trace, in its buckets (what a system that ran before the replayed
    # window has recorded); every policy's first decision sees it. None: the first bucket only.
    history: Trace | None = None

    @property
    def types(self) -> tuple[str, ...]:
        names = self.settings.types or tuple(self.model.profiles)
        return tuple(n for n in names if n in self.model.profiles)


def build_policies(scenario: Scenario, names: Sequence[str]) -> list[Policy]:
    unknown = [n for n in names if n not in POLICY_NAMES]
    if unknown:
        raise InvalidValue(
            "policies", f"unknown {', '.join(unknown)}; choose from {', '.join(POLICY_NAMES)}"
        )
    model, catalog, market = scenario.model, scenario.catalog, scenario.market
    cache = CapacityCache(budget_fraction=scenario.settings.batching.slo_budget_fraction)
    types = scenario.types
    on_demand = {t: catalog.instance_type(t).on_demand_price_per_hour for t in types}
    policies: list[Policy] = []
    for name in names:
        if name == "mark":
            if market in ("ondemand", "mixed"):
                policies.append(_mark("mark-ondemand", scenario, spot=False))
            if market in ("spot", "mixed"):
                policies.append(_mark("mark-spot", scenario, spot=True))
        elif name in ABLATIONS:
            policies.append(
                _mark(name, scenario, spot=market != "ondemand", switches=ABLATIONS[name])
            )
        elif name in ("reactive", "reactive-cpu"):
            cpu = name == "reactive-cpu"
            sagemaker = {
                t: p
                for t, p in catalog.sagemaker_price_per_hour.items()
                if t in types and (t.startswith(_PAPER_CPU_FAMILY) or not cpu)
            }
            if not sagemaker:
                raise InvalidValue("types", f"{name} needs a type with a SageMaker price")
            chosen, cap = cheapest_type(model, sagemaker, cache, batching=not cpu)
            policies.append(
                ReactivePolicy(chosen, sagemaker[chosen], cap, batching=not cpu, name=name)
            )
        elif name in ("queue", "queue-batch"):
            batching = name == "queue-batch"
            chosen, cap = cheapest_type(model, on_demand, cache, batching=batching)
            peak = float(scenario.trace.rates_rps.max(initial=0.0))
            need = ceil_div(peak, cap)
            policies.append(
                QueuePolicy(chosen, name=name, max_replicas=max(1, 2 * need), batching=batching)
            )
        elif name == "skyserve":
            use_spot = market != "ondemand"
            prices = on_demand
            if use_spot:
                market_now = Offerings.of(
                    catalog.offerings(
                        scenario.settings.zones, scenario.trace.grid_s[0], True, types
                    )
                )
                prices = {}
                for t in types:
                    spot = market_now.cheapest_price_per_hour(t, Market.SPOT)
                    prices[t] = on_demand[t] if spot is None else spot
            chosen, qps = cheapest_type(model, prices, cache, batching=False)
            policies.append(SkyServePolicy(chosen, qps, use_spot))
        elif name == "static":
            chosen, cap = cheapest_type(model, on_demand, cache, batching=True)
            peak = float(scenario.trace.rates_rps.max(initial=0.0))
            policies.append(StaticPolicy(chosen, cap, peak))
        elif name == "oracle":
            policies.append(_oracle(scenario, cache))
    return policies


def _mark(
    name: str,
    scenario: Scenario,
    *,
    spot: bool,
    switches: Mapping[str, Mapping[str, Any]] | None = None,
) -> MarkPolicy:
    """Mark on the scenario's config, spot or not, with `switches` (an ablation's config
    updates, by section) applied."""
    switched = switches or {}
    settings = scenario.settings
    allowed = scenario.planner.allowed_types or scenario.types
    planner = {"spot": spot, "allowed_types": allowed, **switched.get("planner", {})}
    return MarkPolicy(
        name=name,
        planner=scenario.planner.model_copy(update=planner),
        forecast=scenario.forecast.model_copy(update=switched.get("forecast", {})),
        serverless=serverless_terms(scenario),
        batching=settings.batching.model_copy(update=switched.get("batching", {})).enabled,
        spill=settings.spill.model_copy(update=switched.get("spill", {})).enabled,
    )


def serverless_terms(scenario: Scenario) -> ServerlessTerms | None:
    """The simulated pool as the live control loop describes it to the planner: the model's
    warm serverless latency, Lambda's price of one such request, the pool's concurrency."""
    latency = scenario.serverless_latency_ms
    if latency <= 0:
        return None
    price = scenario.catalog.lambda_pricing.charge_usd(latency, scenario.serverless_memory_mb)
    return ServerlessTerms(latency, price, scenario.settings.serverless_concurrency)


def _oracle(scenario: Scenario, cache: CapacityCache) -> OraclePolicy:
    model, catalog = scenario.model, scenario.catalog
    arrivals = Arrivals(scenario.trace, scenario.settings.seed)
    rates = arrivals.counts / arrivals.bucket_s
    latency = scenario.serverless_latency_ms
    per_request = (
        catalog.lambda_pricing.charge_usd(latency, scenario.serverless_memory_mb)
        if 0 < latency <= model.slo.latency_ms
        else None
    )
    schedule = solve_oracle(
        model,
        rates,
        arrivals.start_s,
        arrivals.bucket_s,
        catalog,
        spot=scenario.market != "ondemand",
        zones=scenario.settings.zones,
        types=scenario.types,
        serverless_usd_per_request=per_request,
        cache=cache,
        time_limit_s=scenario.oracle_time_limit_s,
    )
    return OraclePolicy(schedule, serverless_latency_ms=latency)


def simulate(
    scenario: Scenario,
    names: Sequence[str],
    progress: Callable[[str, float], None] | None = None,
) -> list[PolicyRun]:
    """Run every named policy on the scenario's trace (same seeded arrivals for each)."""
    runs: list[PolicyRun] = []
    for policy in build_policies(scenario, names):
        arrivals = Arrivals(scenario.trace, scenario.settings.seed)
        tick = None if progress is None else (lambda dt, n=policy.name: progress(n, dt))
        run = run_policy(
            policy,
            scenario.model,
            arrivals,
            scenario.catalog,
            scenario.settings,
            serverless_latency_ms=scenario.serverless_latency_ms,
            serverless_memory_mb=scenario.serverless_memory_mb,
            progress=tick,
            history=None if scenario.history is None else _history_counts(scenario),
        )
        if isinstance(policy, OraclePolicy):
            run.extra["lower_bound_usd"] = policy.schedule.lower_bound_usd
            run.extra["milp_objective_usd"] = policy.schedule.objective_usd
        runs.append(run)
    return runs


def _history_counts(scenario: Scenario) -> np.ndarray:
    """The history's counts per bucket, checked to end where the trace starts."""
    history, trace = scenario.history, scenario.trace
    assert history is not None
    if history.bucket_s != trace.bucket_s:
        raise InvalidValue(
            "history", f"buckets of {history.bucket_s:g} s, the trace's are {trace.bucket_s:g} s"
        )
    if not history.counts.size:
        return np.zeros(0)
    end = float(history.timestamps_s[-1]) + history.bucket_s
    if abs(end - float(trace.timestamps_s[0])) > 1e-6 * history.bucket_s:
        raise InvalidValue(
            "history",
            f"must end where the trace starts ({trace.timestamps_s[0]:g} s), ends at {end:g} s",
        )
    return Arrivals(history, 0).counts
