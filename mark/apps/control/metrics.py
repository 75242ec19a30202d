"""What the control plane exports to Prometheus: the fleet, the forecast it planned for, the
spend rate and the actions taken. Gauges use `mostrecent` so that in `mark serve`'s
multiprocess mode the control plane's value is the one scraped."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import Counter, Gauge

from mark.core.types import Decision, Instance
from provisioner.policy.billing import price_now

__all__ = ["record_fleet", "record_forecasts", "record_decisions"]

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
