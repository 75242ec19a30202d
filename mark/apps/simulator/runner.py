"""`simulate`: build the requested policies for a model and a trace, run each against the same
seeded arrivals, and collect their results (what `mark simulate` and bench/evaluation.py call).

Policy names: `mark` runs as `mark-ondemand` and/or `mark-spot` per the market (`mixed`: both);
`skyserve` uses spot unless the market is `ondemand`; the oracle may buy spot unless the market
is `ondemand`; `reactive`, `queue` and `static` are on-demand by definition.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

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
from mark.apps.simulator.policies.base import ceil_div, cheapest_type, unbatched_capacity_rps
from mark.apps.simulator.workload import Arrivals
from mark.core.catalog import Catalog
from mark.core.config import ForecastConfig, PlannerConfig
from mark.core.errors import InvalidValue
from mark.core.types import Market, Model
from provisioner.policy.capacity import CapacityCache
from provisioner.policy.offerings import Offerings
from provisioner.policy.snapshot import ServerlessTerms
from traces import Trace

__all__ = ["POLICY_NAMES", "MarketChoice", "Scenario", "build_policies", "simulate"]

POLICY_NAMES = ("mark", "reactive", "queue", "skyserve", "static", "oracle")
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
            allowed = scenario.planner.allowed_types or types
            if market in ("ondemand", "mixed"):
                planner = scenario.planner.model_copy(
                    update={"spot": False, "allowed_types": allowed}
                )
                policies.append(_mark("mark-ondemand", planner, scenario))
            if market in ("spot", "mixed"):
                planner = scenario.planner.model_copy(
                    update={"spot": True, "allowed_types": allowed}
                )
                policies.append(_mark("mark-spot", planner, scenario))
        elif name == "reactive":
            sagemaker = {t: p for t, p in catalog.sagemaker_price_per_hour.items() if t in types}
            if not sagemaker:
                raise InvalidValue("types", "reactive needs a type with a SageMaker price")
            chosen, _ = cheapest_type(model, sagemaker, cache, batching=False)
            policies.append(ReactivePolicy(chosen, sagemaker[chosen]))
        elif name == "queue":
            chosen, _ = cheapest_type(model, on_demand, cache, batching=False)
            peak = float(scenario.trace.rates_rps.max(initial=0.0))
            need = ceil_div(peak, unbatched_capacity_rps(model, chosen, cache))
            policies.append(QueuePolicy(chosen, max_replicas=max(1, 2 * need)))
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
            chosen, _ = cheapest_type(model, prices, cache, batching=False)
            qps = unbatched_capacity_rps(model, chosen, cache)
            policies.append(SkyServePolicy(chosen, qps, use_spot))
        elif name == "static":
            chosen, cap = cheapest_type(model, on_demand, cache, batching=True)
            peak = float(scenario.trace.rates_rps.max(initial=0.0))
            policies.append(StaticPolicy(chosen, cap, peak))
        elif name == "oracle":
            policies.append(_oracle(scenario, cache))
    return policies


def _mark(name: str, planner: PlannerConfig, scenario: Scenario) -> MarkPolicy:
    return MarkPolicy(
        name=name,
        planner=planner,
        forecast=scenario.forecast,
        serverless=serverless_terms(scenario),
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
        )
        if isinstance(policy, OraclePolicy):
            run.extra["lower_bound_usd"] = policy.schedule.lower_bound_usd
            run.extra["milp_objective_usd"] = policy.schedule.objective_usd
        runs.append(run)
    return runs
