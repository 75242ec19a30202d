"""The fleet at a glance, as `GET /admin/v1/status`, `mark status` and `/console` show it.

Gathered in each HTTP worker from what the process already has, so that no second store of the
same facts exists: models, live instances, offerings' prices, the ledger and the decision log
from the database; answers and SLO attainment from the inference metrics (all workers' files in
`mark serve`'s multiprocess mode); the forecast peak the control plane last planned for from its
gauge; capacity at the SLO from `provisioner.policy.capacity`, with the budget the front end
batches with (as the router weighs instances).

Rates need two readings of the counters, so each worker samples every `SAMPLE_S` into memory:
a short window of per-model counters (`WINDOW_S`, for each model's rate and recent attainment)
and a bounded ring of fleet totals (`HISTORY_POINTS`, an hour) for the console's plots. Per-model
history is not kept: a thousand-model fleet would hold a thousand series per worker for plots
nobody reads one by one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.metrics import MetricWrapperBase
from sanic import Blueprint, Sanic

from frontend import metrics, observability
from frontend.admin_schema import FleetStatus, InstanceGroup, ModelStatus, Spend, StatusPoint
from mark.adapters.db import Database
from mark.core.config import Config
from mark.core.types import Decision, Instance, InstanceState, Market, Model
from provisioner.policy.billing import price_now
from provisioner.policy.capacity import CapacityCache
from provisioner.policy.offerings import Offerings

__all__ = [
    "SAMPLE_S",
    "WINDOW_S",
    "HISTORY_POINTS",
    "FORECAST_METRIC",
    "Counters",
    "Reading",
    "Sampler",
    "read",
    "sample_forever",
    "bp",
]

logger = logging.getLogger("mark.frontend.status")

bp = Blueprint("status")  # no routes: the sampler's life in each HTTP worker

SAMPLE_S = 5.0
WINDOW_S = 60.0
HISTORY_POINTS = 720  # an hour at SAMPLE_S
# The control plane's gauge (mark.apps.control.metrics.FORECAST; the front end may not import
# the control plane, tests/test_console.py holds the two names together).
FORECAST_METRIC = "mark_forecast_upper_rps"


@dataclass(frozen=True, slots=True)
class Counters:
    """One model's cumulative answers and SLO outcomes."""

    requests: float = 0.0
    slo_met: float = 0.0
    slo_counted: float = 0.0


@dataclass(frozen=True, slots=True)
class Reading:
    """Everything one status or sample is made of, read at `at_s` (epoch seconds)."""

    at_s: float
    models: list[Model]
    instances: list[Instance]
    prices: dict[str, float]
    counters: dict[str, Counters]
    forecasts: dict[str, float]
    cost_usd: float
    instances_usd: float
    serverless_usd: float
    per_model_usd: dict[str, float]


def _family(metric: MetricWrapperBase) -> str:
    (family,) = metric.describe()
    return family.name


def _metrics() -> tuple[dict[str, Counters], dict[str, float]]:
    """Per model: answers and SLO outcomes (summed over path and code), and the forecast peak."""
    metrics.flush()  # this worker's buffered answers count too
    requests: dict[str, float] = {}
    met: dict[str, float] = {}
    counted: dict[str, float] = {}
    forecasts: dict[str, float] = {}
    names = (_family(metrics.REQUESTS), _family(metrics.SLO), FORECAST_METRIC)
    for family in observability.registry().collect():
        if family.name not in names:
            continue
        for sample in family.samples:
            model = sample.labels.get("model", "")
            if family.name == FORECAST_METRIC:
                forecasts[model] = sample.value
            elif not sample.name.endswith("_total"):
                continue  # _created
            elif family.name == names[0]:
                requests[model] = requests.get(model, 0.0) + sample.value
            else:
                counted[model] = counted.get(model, 0.0) + sample.value
                if sample.labels.get("met") == "true":
                    met[model] = met.get(model, 0.0) + sample.value
    counters = {
        m: Counters(requests.get(m, 0.0), met.get(m, 0.0), counted.get(m, 0.0))
        for m in requests.keys() | counted.keys()
    }
    return counters, forecasts


async def read(db: Database) -> Reading:
    models = await db.list_models()
    instances = await db.list_instances(live_only=True)
    offerings = await db.list_offerings()
    costs = await db.costs()
    counters, forecasts = _metrics()
    return Reading(
        at_s=time.time(),
        models=models,
        instances=instances,
        prices=Offerings.of(offerings).prices(),
        counters=counters,
        forecasts=forecasts,
        cost_usd=costs.total_usd,
        instances_usd=costs.instances_usd,
        serverless_usd=costs.serverless_usd,
        per_model_usd=costs.per_model_usd,
    )


def _rate(now: Reading, then_s: float, then: Mapping[str, Counters], model: str) -> float:
    gone = then.get(model, Counters()).requests
    return max(now.counters.get(model, Counters()).requests - gone, 0.0) / (now.at_s - then_s)


def _holders(instances: Iterable[Instance]) -> dict[str, list[Instance]]:
    """The instances listing each model, in one pass: with a thousand models on each of
    twenty instances, a membership test per (model, instance) was millions of comparisons
    every sample."""
    out: dict[str, list[Instance]] = {}
    for inst in instances:
        for name in inst.models:
            out.setdefault(name, []).append(inst)
    return out


def _attainment(met: float, counted: float) -> float | None:
    return min(max(met / counted, 0.0), 1.0) if counted > 0 else None


class Sampler:
    """The samples of one worker: a window of per-model counters, a ring of fleet points."""

    def __init__(self, config: Config) -> None:
        self.config = config
        # Capacities sized with the budget the front end batches with (config.batching).
        self.capacities = CapacityCache(budget_fraction=config.batching.slo_budget_fraction)
        self._window: deque[tuple[float, dict[str, Counters]]] = deque(
            maxlen=math.ceil(WINDOW_S / SAMPLE_S) + 1
        )
        self.history: deque[StatusPoint] = deque(maxlen=HISTORY_POINTS)

    def capacity_rps(self, model: Model, holders: Iterable[Instance]) -> float:
        """Capacity at the SLO of the running ones of `holders`, the instances that list
        `model` (`_holders`), unbatched when the data plane does not batch, as
        `build_snapshot` plans it."""
        max_batch = model.max_batch if self.config.batching.enabled else 1
        total = 0.0
        for inst in holders:
            profile = model.profiles.get(inst.offering.instance_type)
            if inst.state == InstanceState.RUNNING and profile:
                total += self.capacities.get(profile, model.slo, max_batch).rate_rps
        return total

    def add(self, now: Reading) -> None:
        """Keep `now`'s counters; after the first sample, add a fleet point."""
        if self._window and now.at_s > self._window[-1][0]:
            then_s, then = self._window[-1]
            names = [m.name for m in now.models]
            peaks = [now.forecasts[n] for n in names if n in now.forecasts]
            holders = _holders(now.instances)
            self.history.append(
                StatusPoint(
                    at_s=now.at_s,
                    demand_rps=sum(_rate(now, then_s, then, n) for n in names),
                    capacity_rps=sum(
                        self.capacity_rps(m, holders.get(m.name, ())) for m in now.models
                    ),
                    forecast_upper_rps=sum(peaks) if peaks else None,
                    usd_per_hour=sum(price_now(i, now.prices) for i in now.instances),
                    cost_usd=now.cost_usd,
                )
            )
        self._window.append((now.at_s, now.counters))

    def status(self, now: Reading, decisions: list[Decision]) -> FleetStatus:
        """The status at `now`: rates and recent attainment against the oldest counters of
        the window (none before the first sample)."""
        then_s, then = self._window[0] if self._window else (now.at_s, {})
        sampled = now.at_s > then_s
        holders = _holders(now.instances)
        models = []
        for m in now.models:
            c = now.counters.get(m.name, Counters())
            before = then.get(m.name, Counters())
            recent = _attainment(c.slo_met - before.slo_met, c.slo_counted - before.slo_counted)
            models.append(
                ModelStatus(
                    name=m.name,
                    slo=m.slo,
                    requests=int(c.requests),
                    rate_rps=_rate(now, then_s, then, m.name) if sampled else None,
                    forecast_upper_rps=now.forecasts.get(m.name),
                    capacity_rps=self.capacity_rps(m, holders.get(m.name, ())),
                    slo_attainment=_attainment(c.slo_met, c.slo_counted),
                    slo_attainment_recent=recent if sampled else None,
                    instances=len(holders.get(m.name, ())),
                    cost_usd=now.per_model_usd.get(m.name, 0.0),
                )
            )
        groups: dict[tuple[str, Market, InstanceState], list[Instance]] = {}
        for inst in now.instances:
            key = (inst.offering.instance_type, inst.offering.market, inst.state)
            groups.setdefault(key, []).append(inst)
        return FleetStatus(
            at_s=now.at_s,
            window_s=WINDOW_S,
            sample_s=SAMPLE_S,
            models=models,
            instances=[
                InstanceGroup(
                    instance_type=itype,
                    market=market,
                    state=state,
                    count=len(members),
                    usd_per_hour=sum(price_now(i, now.prices) for i in members),
                )
                for (itype, market, state), members in sorted(groups.items())
            ],
            spend=Spend(
                usd_per_hour=sum(price_now(i, now.prices) for i in now.instances),
                budget_usd_per_hour=self.config.planner.budget_per_hour,
                total_usd=now.cost_usd,
                instances_usd=now.instances_usd,
                serverless_usd=now.serverless_usd,
            ),
            decisions=decisions,
            history=list(self.history),
        )


async def sample_forever(db: Database, sampler: Sampler) -> None:
    """Sample every SAMPLE_S until cancelled; a failed reading (the database briefly away) is
    logged and the next one tried."""
    while True:
        try:
            sampler.add(await read(db))
        except Exception:
            logger.exception("status sample failed; trying again in %.0f s", SAMPLE_S)
        await asyncio.sleep(SAMPLE_S)


@bp.before_server_start
async def _start(app: Sanic) -> None:
    app.ctx.sampler = Sampler(app.ctx.config)
    app.ctx.sampling = asyncio.create_task(sample_forever(app.ctx.db, app.ctx.sampler))


@bp.after_server_stop
async def _stop(app: Sanic) -> None:
    task: asyncio.Task[None] | None = getattr(app.ctx, "sampling", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
