"""What the control plane exports to Prometheus: the fleet, the forecast it planned for, the
spend rate, the actions taken, the capacity the cloud took back, and what was promised (each
model's SLO objective, the hourly budget) so that alerts can compare against it
(deploy/prometheus/mark-rules.yml). Gauges use `mostrecent` so that in `mark serve`'s
multiprocess mode the control plane's value is the one scraped."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import Counter, Gauge

from mark.core.types import Decision, Instance, Model
from provisioner.policy.billing import price_now

__all__ = [
    "record_fleet",
    "record_forecasts",
    "record_decisions",
    "record_objectives",
    "record_interruption",
    "record_move",
    "record_placement",
]

INSTANCES = Gauge(
    "mark_instances",
    "Live instances by model, instance type, market and state.",
    ["model", "instance_type", "market", "state"],
    multiprocess_mode="mostrecent",
)
SPEND = Gauge(
    "mark_spend_usd_per_hour",
    "Hourly price of every live instance (what the fleet costs per hour now).",
    multiprocess_mode="mostrecent",
)
FORECAST = Gauge(
    "mark_forecast_upper_rps",
    "Peak upper-quantile forecast over the planning horizon, per model (what was provisioned for).",
    ["model"],
    multiprocess_mode="mostrecent",
)
ACTIONS = Counter(
    "mark_control_actions",
    "Control-loop decisions by kind (launch, drain, terminate, hold, budget-limited, error).",
    ["action"],
)
SLO_OBJECTIVE = Gauge(
    "mark_slo_objective_ratio",
    "Share of a model's requests its SLO promises within the latency (the SLO percentile); "
    "1 minus it is the error budget that burn rates are measured against.",
    ["model"],
    multiprocess_mode="mostrecent",
)
BUDGET = Gauge(
    "mark_budget_usd_per_hour",
    "The planner's hourly spending cap (planner.budget_per_hour); absent when there is none.",
    multiprocess_mode="mostrecent",
)
INTERRUPTIONS = Counter(
    "mark_interruptions",
    "Instances the cloud took back: `notice` (an interruption notice: spot reclaim, scheduled "
    "retirement) or `vanished` (found gone at a sync without one).",
    ["kind"],
)
for _kind in ("notice", "vanished"):
    INTERRUPTIONS.labels(_kind)  # both series exist, at 0, before the first interruption

PLACEMENT_MOVES = Counter(
    "mark_placement_moves",
    "Moves of the many-model placement through the workers' repository API, by kind (load, "
    "drain: the front ends stop routing the model there, unload) and outcome (ok, failed).",
    ["kind", "outcome"],
)
PLACEMENT_MODELS = Gauge(
    "mark_placement_models",
    "Models of the many-model fleet by the last placement: placed (on one instance or more), "
    "zero (no traffic expected: placed nowhere, unloaded everywhere) or unplaced (fit nowhere).",
    ["state"],
    multiprocess_mode="mostrecent",
)

_seen: set[tuple[str, str, str, str]] = set()


def record_fleet(instances: Iterable[Instance], prices: Mapping[str, float]) -> None:
    """The fleet by label and what it costs per hour now (`billing.price_now`: spot at its
    pool's current price in `prices`, by offering key)."""
    counts: dict[tuple[str, str, str, str], int] = {}
    spend = 0.0
    for inst in instances:
        if not inst.live:
            continue
        key = (
            inst.models[0] if inst.models else "",
            inst.offering.instance_type,
            inst.offering.market.value,
            inst.state.value,
        )
        counts[key] = counts.get(key, 0) + 1
        spend += price_now(inst, prices)
    for key in _seen - counts.keys():
        INSTANCES.labels(*key).set(0)
    for key, n in counts.items():
        INSTANCES.labels(*key).set(n)
    _seen.update(counts)
    SPEND.set(spend)


def record_forecasts(peaks: Mapping[str, float]) -> None:
    for model, peak in peaks.items():
        FORECAST.labels(model).set(peak)


def record_decisions(decisions: Iterable[Decision]) -> None:
    for d in decisions:
        ACTIONS.labels(d.action.value).inc()


def record_objectives(models: Iterable[Model], budget_per_hour: float | None) -> None:
    for m in models:
        SLO_OBJECTIVE.labels(m.name).set(m.slo.percentile)
    if budget_per_hour is not None:
        BUDGET.set(budget_per_hour)


def record_interruption(kind: str) -> None:
    """`kind`: "notice" or "vanished" (see INTERRUPTIONS)."""
    INTERRUPTIONS.labels(kind).inc()


def record_move(kind: str, ok: bool) -> None:
    """`kind`: "load", "drain" or "unload" (see PLACEMENT_MOVES)."""
    PLACEMENT_MOVES.labels(kind, "ok" if ok else "failed").inc()


def record_placement(placed: int, zero: int, unplaced: int) -> None:
    for state, n in (("placed", placed), ("zero", zero), ("unplaced", unplaced)):
        PLACEMENT_MODELS.labels(state).set(n)
