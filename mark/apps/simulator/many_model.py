"""Many-model simulation (issue 16): thousands of models sharing a fleet of one instance type,
placed by `provisioner.policy.placement.place`, replayed per bucket, not per request.

24 hours of the AWS scenario (3,000 models, 6,230 req/s at the peak) is about 300 million
requests; the per-request engine (`engine.run_policy`) would take hours. Here every bucket of the
trace (60 s) is one step, vectorised over models with numpy:

- Routing: a model's requests in a bucket are split evenly over the instances its placement
  assigned it to that hold it loaded (make-before-break: while a move loads, the old residents
  serve it). Each instance's load is its squishy occupancy (`placement.occupancy`) at the rates
  routed to it, summed over its models; an instance within 1 meets the SLO for all its requests
  (the capacity behind `occupancy` is the M/D/c rate at which the SLO percentile holds), and
  beyond 1 the excess share 1 - 1/occupancy misses, or spills to serverless where the model's
  serverless latency fits its SLO. Approximated: queueing within a bucket (bursts shorter than a
  minute), the batcher's duty cycle between co-resident models (placement's own approximation),
  and the exact moment a move finishes (a model serves from the bucket after its load ends).
  Checked against the per-request engine on one model and one type (static, the same trace):
  tests/test_many_model_sim.py compares SLO attainment and cost.
- Cache (the worker's, mark/apps/worker/cache.py): requests of a model held by no instance are
  cache misses. The model is loaded on demand where `placement_steps.load_target` says (the
  front end's rule: the least busy instance whose load ends within the deadline, else the
  soonest; busy: the occupancy routed to it so far in the bucket), among the instances with
  room once the least recently used models that no placement needs and that served nothing in
  the last `protect_s` (eviction protection) are evicted. A load takes size_mb /
  `disk_mb_per_s` where the instance's disk cache (`disk_mb`, LRU, models in memory kept
  longest) has the artifact, else size_mb / `load_mb_per_s` from the store, after what that
  instance is already loading. A request arriving while its model loads waits for the load: it
  meets the SLO if the wait plus T(1) fits (uniform arrivals give the share), else it spills to
  serverless if that fits the SLO, else misses. The misses of a bucket start at moments spread
  over it (hottest first), and a model's last use is its last request's expected time, so that
  a cache slot turns over within a bucket; the requests a load serves add their occupancy to
  the instance's. Requests of held models are hits.
- Instances: launches are ready after the type's `launch_overhead_s`, then load their models
  one after another; billing is per second with the 60 s minimum (`InstanceType.charge_usd`), on
  spot at the catalog's spot history (`billing.spot_charge_usd`). No spot interruptions here.
  Both policies start warm: the first placement is running and loaded at the trace's start.

Policies:
- `mark` (`mark-ondemand`, `mark-spot`): every `replan_s` each model's forecaster
  (`predictors.registry`) forecasts its rate for the next interval; a model expected to get at
  least `min_expected_requests` in it has the forecast's upper quantile as its rate, and
  `placement_fleet.split_cached` places only those whose memory is cheaper than serving them by
  loads (`ManySettings.cache` off: all), the others left to the cache with their share reserved
  on every instance (`placement.CacheShare`); a resident stays loaded until its memory is
  needed. The placement is
  applied as it comes (loads, unloads, launches); instances left with nothing placed are
  terminated, and the least-occupied one is emptied into the others when the placement without
  it needs no new instance (its models' loads count against the move bound). The rate, the
  type and the re-plan are the live control loop's (`provisioner.policy.placement_fleet`,
  mark/apps/control/placement_applier.py); the live loop also unloads a model placed nowhere
  from every instance (scale to zero), which this leaves to the cache.
- `static`: the seeds' approach, placed once for every model's peak rate over the trace (what an
  offline knapsack sized for the peak does) and never changed; misses are cached loads.

The instance type: each policy packs its first placement (the first bucket's rates for Mark,
the peaks for static) onto every candidate type and keeps the cheapest for the run.

Route groups (issue 19 item 5; the live loop's `placement.groups`): a model's group is its fleet
file's `group`, else the first rule of `ManySettings.groups` its name matches
(`provisioner.policy.route_groups.group_of`), else "rest". Each group runs as a fleet of its
own (its type, instances and cache), as the live loop places them, with its share of
`max_moves` (`route_groups.share_moves`: the bound is the whole fleet's; every group has a
share here, where the live loop gives none to a group with neither instances nor traffic that
tick), and the run adds the groups up (`ManyRun.groups` keeps each); with one group the run is
the flat fleet's.

Load bandwidth: `LOAD_MB_PER_S`, estimated: neither seed gives one; 100 MB/s is about one S3
GET stream (AWS's S3 performance guidelines suggest parallel ranged GETs to go faster) and puts a
300 MB translation model at 3 s, an 800 MB bert-base at 8 s. From the instance's disk cache,
`DISK_MB_PER_S`, estimated: 1 GB/s, a local NVMe SSD's sequential read (Cortex: "loads from
disk are fast"; its blog gives no figure), 0.3 s for a translation model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from mark.apps.simulator.fleet_file import FleetModel
from mark.core.catalog import Catalog
from mark.core.config import PlacementConfig, RouteGroup, WorkerConfig
from mark.core.errors import InvalidValue
from mark.core.types import InstanceType, Profile, Slo
from predictors.base import Forecaster
from predictors.registry import create_forecaster
from provisioner.policy import billing
from provisioner.policy.capacity import CapacityCache
from provisioner.policy.placement import (
    NO_CACHE,
    CacheShare,
    ModelNeed,
    Placement,
    Resident,
    occupancy,
)
from provisioner.policy.placement_fleet import (
    LoadCost,
    TypeOption,
    cheapest_type,
    placement_rate,
    replan,
    split_cached,
)
from provisioner.policy.placement_steps import LoadOption, load_target
from provisioner.policy.route_groups import group_names, group_of, share_moves
from traces import Trace

__all__ = [
    "LOAD_MB_PER_S",
    "MANY_POLICIES",
    "ManySettings",
    "ManyScenario",
    "ManyRun",
    "model_counts",
    "occupancy_floor_hours",
    "route_groups",
    "simulate_many",
]

LOAD_MB_PER_S = 100.0
DISK_MB_PER_S = 1000.0
MANY_POLICIES = ("mark", "static")
_OCC_POINTS = 256
_EPS = 1e-9

Market = Literal["ondemand", "spot", "mixed"]
_LIVE = PlacementConfig()  # the live control loop's defaults (`[placement]`)
_WORKER = WorkerConfig()  # the worker's cache defaults (`[worker]`)
_MIB = 2**20


@dataclass(frozen=True)
class ManySettings:
    """Knobs of the many-model engine; the defaults are the ones the scenarios ran with (the
    placement's are the live loop's, `[placement]`)."""

    types: tuple[str, ...] = ()
    zones: tuple[str, ...] = ("us-east-1a", "us-east-1b", "us-east-1c")
    budget_fraction: float = 0.8
    load_mb_per_s: float = LOAD_MB_PER_S  # from the store
    disk_mb_per_s: float = DISK_MB_PER_S  # from the instance's disk cache
    disk_mb: float = _WORKER.disk_budget_bytes / _MIB  # `worker.disk_budget_bytes`
    protect_s: float = _WORKER.protect_s  # `worker.protect_s`: eviction protection
    cache: bool = True  # False: every model with traffic placed (the "no cache" ablation)
    allowance_share: float = _LIVE.miss_allowance_share
    max_moves: int = _LIVE.max_moves
    replan_s: float = 300.0
    predictor: str = "ewma"
    quantile: float = 0.95
    replicate_above: float = _LIVE.replicate_above
    min_expected_requests: float = _LIVE.min_expected_requests
    groups: tuple[RouteGroup, ...] = _LIVE.groups  # route group rules (module docstring)


@dataclass(frozen=True)
class ManyScenario:
    fleet: tuple[FleetModel, ...]
    trace: Trace
    catalog: Catalog
    market: Market = "ondemand"
    settings: ManySettings = ManySettings()


@dataclass
class ManyRun:
    """What one policy did: totals, per-model requests and requests within the SLO (fleet
    order), per-plan moves and instances per bucket; with route groups, each group's run
    (`groups`: its models' arrays in its own order) and the types joined by "+"."""

    name: str
    instance_type: str
    duration_s: float
    requests_by_model: NDArray[np.float64]
    good_by_model: NDArray[np.float64]
    instance_cost_usd: float = 0.0
    serverless_cost_usd: float = 0.0
    spilled: float = 0.0
    hits: float = 0.0
    loads: int = 0
    demand_loads: int = 0
    launches: int = 0
    moves: list[int] = field(default_factory=list)
    instance_hours: dict[str, float] = field(default_factory=dict)
    live_by_bucket: list[int] = field(default_factory=list)
    groups: dict[str, ManyRun] = field(default_factory=dict)

    @property
    def peak_instances(self) -> int:
        return max(self.live_by_bucket, default=0)

    @property
    def cost_usd(self) -> float:
        return self.instance_cost_usd + self.serverless_cost_usd

    def summary(self, fleet: Sequence[FleetModel]) -> dict[str, Any]:
        """The policy's summary.json entry: DESIGN.md's single-model keys that apply, its
        many-model keys, then extras."""
        req, good = self.requests_by_model, self.good_by_model
        total = float(req.sum())
        served = req > 0
        attained = np.divide(good, req, out=np.ones_like(req), where=served)
        percentile = np.array([m.slo.percentile for m in fleet])
        order = np.lexsort((np.arange(req.size), -req))
        deciles = []
        for part in np.array_split(order, 10):
            r = float(req[part].sum())
            deciles.append(round(float(good[part].sum()) / r, 6) if r > 0 else 1.0)
        hours = self.duration_s / 3600.0
        moves = self.moves or [0]
        return {
            "cost_usd": round(self.cost_usd, 6),
            "slo_attainment": round(float(good.sum()) / total, 6) if total else 1.0,
            "requests": int(round(total)),
            "spilled": int(round(self.spilled)),
            "launches": self.launches,
            "instance_hours": {t: round(h, 4) for t, h in self.instance_hours.items()},
            "cost_per_hour_usd": round(self.cost_usd / hours, 6),
            "models": int(served.sum()),
            "models_meeting_slo": int((served & (attained >= percentile - _EPS)).sum()),
            "cache_hit_rate": round(self.hits / total, 6) if total else 1.0,
            "loads": self.loads,
            "slo_attainment_by_decile": deciles,
            "loads_per_hour": round(self.loads / hours, 3),
            "demand_loads": self.demand_loads,
            "moves_per_tick_max": int(max(moves)),
            "moves_per_tick_mean": round(float(np.mean(moves)), 3),
            "peak_instances": self.peak_instances,
            "instance_cost_usd": round(self.instance_cost_usd, 6),
            "serverless_cost_usd": round(self.serverless_cost_usd, 6),
            **({"route_groups": self._by_group(hours)} if self.groups else {}),
        }

    def _by_group(self, hours: float) -> dict[str, dict[str, Any]]:
        out = {}
        for name, part in self.groups.items():
            requests = float(part.requests_by_model.sum())
            out[name] = {
                "models": int(part.requests_by_model.size),
                "instance_type": part.instance_type,
                "cost_per_hour_usd": round(part.cost_usd / hours, 6),
                "cache_hit_rate": round(part.hits / requests, 6) if requests else 1.0,
                "loads_per_hour": round(part.loads / hours, 3),
                "peak_instances": part.peak_instances,
            }
        return out


def model_counts(trace: Trace, names: Sequence[str]) -> NDArray[np.float64]:
    """(buckets, models) request counts of a many-model trace, models in `names`' order. A
    model of the trace that the fleet does not name is an error (its requests would vanish)."""
    if trace.models is None:
        raise InvalidValue("trace", "a many-model simulation needs a trace with a model column")
    grid = trace.grid_s
    unique, inverse = np.unique(np.asarray(trace.models), return_inverse=True)
    index = {str(n): i for i, n in enumerate(names)}
    unknown = [str(n) for n in unique if str(n) not in index]
    if unknown:
        raise InvalidValue("fleet", f"the trace has models the fleet lacks: {unknown[0]!r}, ...")
    column = np.array([index[str(n)] for n in unique], dtype=np.int64)[inverse]
    row = np.rint((trace.timestamps_s - grid[0]) / trace.bucket_s).astype(np.int64)
    counts = np.zeros((grid.size, len(names)))
    np.add.at(counts, (row, column), trace.counts)
    return counts


class _Models:
    """The fleet on one instance type: per-model profile, memory, SLO, and a vectorised
    occupancy (interpolated on a grid of rates per distinct profile and SLO)."""

    def __init__(
        self,
        fleet: Sequence[FleetModel],
        catalog: Catalog,
        itype: str,
        cache: CapacityCache,
        settings: ManySettings,
        price_per_hour: float | None,
    ) -> None:
        self.names = [m.name for m in fleet]
        self.cache = cache
        self.profiles: list[Profile] = []
        self.memory = np.empty(len(fleet))
        self.size = np.array([m.size_mb for m in fleet])
        self.slos = [m.slo for m in fleet]
        self.group = np.empty(len(fleet), dtype=np.int64)
        self.tables: list[tuple[NDArray[np.float64], NDArray[np.float64]]] = []
        groups: dict[tuple[int, Slo], int] = {}
        for i, m in enumerate(fleet):
            profile = catalog.model(m.profile).profiles.get(itype)
            if profile is None:
                raise InvalidValue("types", f"{m.profile} has no profile on {itype}")
            self.profiles.append(profile)
            self.memory[i] = profile.memory_mb if profile.memory_mb > 0 else m.size_mb
            key = (id(profile), m.slo)
            if key not in groups:
                groups[key] = len(self.tables)
                self.tables.append(self._table(profile, m.slo))
            self.group[i] = groups[key]
        self.members = [np.flatnonzero(self.group == g) for g in range(len(self.tables))]
        self.service_1_s = np.array([p.service_ms(1) / 1000.0 for p in self.profiles])
        self.slo_s = np.array([s.latency_ms / 1000.0 for s in self.slos])
        self.limit_mb = catalog.instance_type(itype).model_capacity_mb
        self.memory_usd_per_mb_s = (price_per_hour or 0.0) / 3600.0 / self.limit_mb
        self.costs: dict[str, LoadCost] = {}
        for i, m in enumerate(fleet):
            entry = catalog.model(m.profile)
            fits = 0 < entry.serverless_latency_ms <= m.slo.latency_ms
            spill_usd = (
                catalog.lambda_pricing.charge_usd(
                    entry.serverless_latency_ms, entry.serverless_memory_mb
                )
                if fits
                else None
            )
            on_disk = m.size_mb <= settings.disk_mb
            speed = settings.disk_mb_per_s if on_disk else settings.load_mb_per_s
            self.costs[m.name] = LoadCost(m.size_mb / speed, float(self.service_1_s[i]), spill_usd)

    def need(self, i: int, rate_rps: float) -> ModelNeed:
        p = self.profiles[i]
        return ModelNeed(
            self.names[i], rate_rps, float(self.memory[i]), p, self.slos[i], p.max_batch
        )

    def _table(self, profile: Profile, slo: Slo) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        cap = self.cache.get(profile, slo, profile.max_batch).rate_rps
        if cap <= 0:
            return np.array([1.0]), np.array([math.inf])
        template = ModelNeed("", 1.0, 0.0, profile, slo, profile.max_batch)
        rates = np.geomspace(cap * 1e-6, cap * 4.0, _OCC_POINTS)
        return rates, np.array([occupancy(template, float(r), self.cache) for r in rates])

    def occupancy(
        self, model: NDArray[np.int64], rates: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        """Occupancy of `model[j]` at `rates[j]`: interpolated inside the grid, proportional to
        the rate outside it (one batch size throughout: 1 below, the largest above)."""
        out = np.zeros(rates.size)
        groups = self.group[model]
        for g, (grid, occ) in enumerate(self.tables):
            sel = groups == g
            if not sel.any():
                continue
            r = rates[sel]
            value = np.interp(r, grid, occ)
            value = np.where(r < grid[0], occ[0] * r / grid[0], value)
            out[sel] = np.where(r > grid[-1], occ[-1] * r / grid[-1], value)
        return out


@dataclass
class _Instance:
    id: str
    launched_s: float
    ready_s: float
    loading_until_s: float
    ended_s: float | None = None
    retire_s: float | None = None


class _Fleet:
    """Running instances of one type as rows of (instances, models) matrices: when each model
    is ready on each (inf: not held), where placement routes it, when it last served."""

    def __init__(self, models: _Models, itype: InstanceType, settings: ManySettings) -> None:
        self.models = models
        self.itype = itype
        self.limit_mb = itype.model_capacity_mb
        self.load_s = models.size / settings.load_mb_per_s
        self.disk_load_s = models.size / settings.disk_mb_per_s
        self.disk_mb = settings.disk_mb
        self.protect_s = settings.protect_s
        n = len(models.names)
        self.instances: list[_Instance] = []
        self.ended: list[_Instance] = []
        self.ready_at = np.empty((0, n))
        self.placed = np.zeros((0, n), dtype=bool)
        self.last_used = np.empty((0, n))
        self.on_disk = np.zeros((0, n), dtype=bool)
        self.index = {name: i for i, name in enumerate(models.names)}
        self.loads = 0
        self.launches = 0
        self._next_id = 0

    def residents(self) -> list[Resident]:
        """What every instance not retiring holds (loaded or loading)."""
        held = np.isfinite(self.ready_at)
        names = self.models.names
        return [
            Resident(inst.id, frozenset(names[j] for j in np.flatnonzero(held[i])))
            for i, inst in enumerate(self.instances)
            if inst.retire_s is None
        ]

    def retire(self, now_s: float) -> None:
        """Terminate the retiring instances whose models are ready elsewhere by now."""
        done = [
            i
            for i, inst in enumerate(self.instances)
            if inst.retire_s is not None and inst.retire_s <= now_s + _EPS
        ]
        self.terminate(done, now_s)

    def load_finish_s(self, row: int, model: int, now_s: float) -> float:
        """When a load of `model` started now on instance `row` would end: after the loads it
        has in flight, from its disk cache where the artifact is there, else from the store."""
        inst = self.instances[row]
        took = self.disk_load_s if self.on_disk[row, model] else self.load_s
        return max(now_s, inst.loading_until_s, inst.ready_s) + float(took[model])

    def load(self, row: int, model: int, now_s: float, *, warm: bool) -> float:
        """Start loading `model` on instance `row`; when it is ready. Its artifact joins the
        disk cache, whose least recently used artifacts leave when it is over budget (those of
        models not in memory first, as the worker's cache does)."""
        inst = self.instances[row]
        if warm:
            ready = now_s
        else:
            ready = self.load_finish_s(row, model, now_s)
            inst.loading_until_s = ready
            self.loads += 1
        self.ready_at[row, model] = ready
        self.last_used[row, model] = now_s
        self.on_disk[row, model] = True
        sizes = self.models.size
        over = float(sizes[self.on_disk[row]].sum()) - self.disk_mb
        if over > _EPS:
            cand = np.flatnonzero(self.on_disk[row])
            cand = cand[cand != model]
            in_memory = np.isfinite(self.ready_at[row, cand])
            order = cand[np.lexsort((self.last_used[row, cand], in_memory))]
            for k in order.tolist():
                if over <= _EPS:
                    break
                self.on_disk[row, k] = False
                over -= float(sizes[k])
        return ready

    def launch(self, now_s: float, *, warm: bool) -> int:
        self._next_id += 1
        ready = now_s if warm else now_s + self.itype.launch_overhead_s
        self.instances.append(_Instance(f"i-{self._next_id:05d}", now_s, ready, ready))
        n = len(self.models.names)
        self.ready_at = np.vstack([self.ready_at, np.full((1, n), np.inf)])
        self.placed = np.vstack([self.placed, np.zeros((1, n), dtype=bool)])
        self.last_used = np.vstack([self.last_used, np.full((1, n), -np.inf)])
        self.on_disk = np.vstack([self.on_disk, np.zeros((1, n), dtype=bool)])
        self.launches += 1
        return len(self.instances) - 1

    def terminate(self, rows: Sequence[int], now_s: float) -> None:
        if not rows:
            return
        for r in rows:
            self.instances[r].ended_s = now_s
            self.ended.append(self.instances[r])
        keep = np.setdiff1d(np.arange(len(self.instances)), np.asarray(rows, dtype=np.int64))
        self.instances = [self.instances[i] for i in keep.tolist()]
        self.ready_at, self.placed = self.ready_at[keep], self.placed[keep]
        self.last_used, self.on_disk = self.last_used[keep], self.on_disk[keep]

    def apply(self, plan: Placement, now_s: float, *, warm: bool) -> None:
        """Carry out a placement: unloads, loads, launches for its new bins, the routing."""
        rows = {inst.id: i for i, inst in enumerate(self.instances)}
        for iid, name in plan.unload:
            self.ready_at[rows[iid], self.index[name]] = np.inf
        for iid, name in plan.loads:
            self.load(rows[iid], self.index[name], now_s, warm=warm)
        self.placed[:] = False
        empty: list[int] = []
        kept: set[int] = set()
        for b in plan.bins:
            row = (
                rows[b.instance_id] if b.instance_id is not None else self.launch(now_s, warm=warm)
            )
            kept.add(row)
            for rep in sorted(b.replicas, key=lambda r: r.model):
                j = self.index[rep.model]
                self.placed[row, j] = True
                if not np.isfinite(self.ready_at[row, j]):
                    self.load(row, j, now_s, warm=warm)
            if not b.kept:
                empty.append(row)
        for i, inst in enumerate(self.instances):
            if i not in kept and inst.retire_s is None:
                # Emptied into the others: it serves its models until they are ready there.
                held = np.isfinite(self.ready_at[i])
                elsewhere = np.delete(self.ready_at, i, axis=0)[:, held]
                soonest = elsewhere.min(axis=0) if elsewhere.size else np.zeros(0)
                soonest = soonest[np.isfinite(soonest)]
                inst.retire_s = max(now_s, float(soonest.max())) if soonest.size else now_s
        self.terminate(empty, now_s)

    def charge_usd(self, end_s: float, price_at: Callable[[float], float | None] | None) -> float:
        total = 0.0
        for inst in [*self.ended, *self.instances]:
            stop = inst.ended_s if inst.ended_s is not None else end_s
            if price_at is None:
                total += self.itype.charge_usd(stop - inst.launched_s)
            else:
                total += billing.spot_charge_usd(self.itype, inst.launched_s, stop, price_at)
        return total

    def hours(self, end_s: float) -> float:
        ends = [
            i.ended_s if i.ended_s is not None else end_s for i in [*self.ended, *self.instances]
        ]
        starts = [i.launched_s for i in [*self.ended, *self.instances]]
        return float(sum(e - s for e, s in zip(ends, starts, strict=True))) / 3600.0


class _Serving:
    """One bucket's requests over the fleet (see the module docstring)."""

    def __init__(
        self, fleet: _Fleet, spillable: NDArray[np.bool_], spill_usd: NDArray[np.float64]
    ) -> None:
        self.fleet = fleet
        self.spillable = spillable
        self.spill_usd = spill_usd
        n = len(fleet.models.names)
        self.requests = np.zeros(n)
        self.good = np.zeros(n)
        self.spilled = 0.0
        self.hits = 0.0
        self.demand_loads = 0
        self.serverless_usd = 0.0
        self.busy = np.zeros(0)  # occupancy per instance in the bucket being served

    def _lost(self, model: NDArray[np.int64] | int, count: NDArray[np.float64] | float) -> None:
        """Requests that cannot be served in time on the fleet: spill or miss."""
        spill = np.where(self.spillable[model], count, 0.0)
        self.spilled += float(np.sum(spill))
        self.serverless_usd += float(np.sum(spill * self.spill_usd[model]))
        np.add.at(self.good, np.atleast_1d(model), np.atleast_1d(spill))

    def bucket(self, counts: NDArray[np.float64], start_s: float, width_s: float) -> None:
        fleet, models = self.fleet, self.fleet.models
        self.requests += counts
        avail = fleet.ready_at <= start_s + _EPS
        route = fleet.placed & avail
        orphan = ~route.any(axis=0) & avail.any(axis=0)
        route[:, orphan] = avail[:, orphan]
        targets = route.sum(axis=0)
        share = np.where(route, counts / np.maximum(targets, 1), 0.0)
        self.hits += float(share.sum())
        inst, model = np.nonzero(share)
        occ = models.occupancy(model, share[inst, model] / width_s)
        self.busy = np.bincount(inst, weights=occ, minlength=route.shape[0]).astype(np.float64)
        missing = np.flatnonzero((counts > 0) & (targets == 0))
        # the misses spread over the bucket (hottest first), each from its own moment on, so
        # that a cache slot turns over within a bucket as the worker's LRU does
        order = missing[np.argsort(-counts[missing], kind="stable")].tolist()
        for k, j in enumerate(order):
            at_s = start_s + width_s * k / len(order)
            served = self._miss(j, float(counts[j]), at_s, start_s + width_s - at_s)
            if served is not None:
                share[served[0], j] += served[1]
                rate = np.array([served[1] / width_s])
                self.busy[served[0]] += float(models.occupancy(np.array([j]), rate)[0])
        inst, model = np.nonzero(share)
        if inst.size:
            occ = models.occupancy(model, share[inst, model] / width_s)
            load = np.bincount(inst, weights=occ, minlength=route.shape[0])
            ok = np.where(load > 1.0, 1.0 / np.maximum(load, _EPS), 1.0)
            served_on = share[inst, model]
            np.add.at(self.good, model, served_on * ok[inst])
            self._lost(model, served_on * (1.0 - ok[inst]))
            # its last request: the last of `served_on` uniform arrivals over the bucket
            last = start_s + width_s * served_on / (served_on + 1.0)
            fleet.last_used[inst, model] = np.maximum(fleet.last_used[inst, model], last)

    def _miss(
        self, j: int, count: float, start_s: float, width_s: float
    ) -> tuple[int, float] | None:
        """Model `j` is in memory on no instance: its load (in flight, else started on the
        instance that can load it soonest) serves the requests that arrive once it is ready,
        and those before it that can wait for it within the SLO; the others spill or miss.
        (row, the requests the instance serves), or None when no instance can hold it."""
        fleet = self.fleet
        row = self._room_for(j, start_s)
        if row is None:
            self._lost(j, count)
            return None
        loading = np.isfinite(fleet.ready_at[row, j])
        ready = (
            float(fleet.ready_at[row, j]) if loading else fleet.load(row, j, start_s, warm=False)
        )
        if not loading:
            self.demand_loads += 1
        wait = max(ready - start_s, 0.0)
        early = count * min(1.0, wait / width_s)
        later = count - early
        slack = float(self.fleet.models.slo_s[j] - self.fleet.models.service_1_s[j])
        within = early * (min(1.0, max(0.0, slack / wait)) if wait > 0 else 1.0)
        self.hits += later
        self._lost(j, early - within)
        return row, later + within

    def _room_for(self, j: int, now_s: float) -> int | None:
        """The instance to serve model `j` from: one loading it already, else the ready one
        `placement_steps.load_target` picks (the least busy whose load fits the deadline, else
        the soonest) among those with room once the least recently used
        models no placement routes there and not used in the worker's `protect_s` are evicted
        for room (evicted then); None when none can hold it."""
        fleet = self.fleet
        ready = np.array(
            [inst.ready_s <= now_s + _EPS and inst.retire_s is None for inst in fleet.instances],
            dtype=bool,
        )
        if not ready.any():
            return None
        held = np.isfinite(fleet.ready_at)
        holding = np.flatnonzero(ready & held[:, j])
        if holding.size:
            return int(holding[0])
        memory = fleet.models.memory
        used = held @ memory
        evictable = (
            held
            & ~fleet.placed
            & (fleet.ready_at <= now_s)
            & (fleet.last_used < now_s - fleet.protect_s + _EPS)
        )
        free = np.where(ready, fleet.limit_mb - used + evictable @ memory, -math.inf)
        need = float(memory[j])
        rows = np.flatnonzero(free >= need - _EPS)
        slack = float(fleet.models.slo_s[j] - fleet.models.service_1_s[j])
        options = [
            LoadOption(
                str(r),
                bool(fleet.placed[r, j]),
                finish := fleet.load_finish_s(r, j, now_s),
                finish - now_s <= slack + _EPS,
                float(self.busy[r]),
            )
            for r in rows.tolist()
        ]
        chosen = load_target(options)
        if chosen is None:
            return None
        best = int(chosen.instance_id)
        room = fleet.limit_mb - float(used[best])
        lru = np.flatnonzero(evictable[best])
        for k in lru[np.argsort(fleet.last_used[best, lru], kind="stable")].tolist():
            if room >= need - _EPS:
                break
            fleet.ready_at[best, k] = np.inf
            room += float(memory[k])
        return best


def _candidate_types(scenario: ManyScenario) -> list[str]:
    catalog = scenario.catalog
    profiles = {m.profile for m in scenario.fleet}
    names = scenario.settings.types or tuple(catalog.instance_types)
    for name in names:
        catalog.instance_type(name)
    return [n for n in names if all(n in catalog.model(p).profiles for p in profiles)]


def _split(
    models: _Models,
    rates: NDArray[np.float64],
    settings: ManySettings,
    mean: NDArray[np.float64] | None = None,
) -> tuple[list[ModelNeed], CacheShare]:
    """The models to place and what the cached ones take (`placement_fleet.split_cached`, the
    live control loop's rule); with `settings.cache` off every model with traffic is placed."""
    needs = [models.need(i, float(r)) for i, r in enumerate(rates.tolist()) if r > 0]
    if not settings.cache:
        return needs, NO_CACHE
    return split_cached(
        needs,
        models.costs,
        dict(zip(models.names, (mean if mean is not None else rates).tolist(), strict=True)),
        protect_s=settings.protect_s,
        memory_usd_per_mb_s=models.memory_usd_per_mb_s,
        allowance_share=settings.allowance_share,
        memory_limit_mb=models.limit_mb,
        cache=models.cache,
    )


def _plan(
    models: _Models,
    rates: NDArray[np.float64],
    residents: Sequence[Resident],
    limit_mb: float,
    settings: ManySettings,
    max_moves: int,
    mean: NDArray[np.float64] | None = None,
) -> Placement:
    """`placement_fleet.replan` of the models `_split` places, the live control loop's rule
    (one instance fewer where the others have room); `mean`: the mean forecast rates."""
    needs, cached = _split(models, rates, settings, mean)
    return replan(
        needs,
        residents,
        memory_limit_mb=limit_mb,
        max_moves=max_moves,
        cache=models.cache,
        replicate_above=settings.replicate_above,
        cached=cached,
    )


def _choose_type(
    scenario: ManyScenario, rates: NDArray[np.float64], price_of: Callable[[str], float | None]
) -> tuple[str, _Models]:
    """The candidate type whose placement of `rates` on new instances costs least per hour
    (`placement_fleet.cheapest_type`, the live control loop's rule)."""
    settings = scenario.settings
    cache = CapacityCache(budget_fraction=settings.budget_fraction)
    by_name: dict[str, _Models] = {}
    options = []
    for name in _candidate_types(scenario):
        price = price_of(name)
        models = by_name[name] = _Models(
            scenario.fleet, scenario.catalog, name, cache, settings, price
        )
        needs, cached = _split(models, rates, settings)
        limit = scenario.catalog.instance_type(name).model_capacity_mb
        options.append(TypeOption(name, price, limit, tuple(needs), cached))
    chosen, reasons = cheapest_type(options, cache, scenario.settings.replicate_above)
    if chosen is None:
        raise InvalidValue("types", "no instance type can hold the fleet: " + "; ".join(reasons))
    return chosen, by_name[chosen]


def _spot_pool(scenario: ManyScenario, itype: str, at_s: float) -> Callable[[float], float | None]:
    """The cheapest zone's spot price history for `itype`, as a function of time."""
    catalog = scenario.catalog
    priced = [
        (p, z)
        for z in scenario.settings.zones
        if (p := catalog.spot_price(itype, z, at_s)) is not None
    ]
    if not priced:
        raise InvalidValue("market", f"no spot price for {itype} in {scenario.settings.zones}")
    zone = min(priced)[1]
    return lambda t: catalog.spot_price(itype, zone, t)


def _run_group(
    scenario: ManyScenario,
    name: str,
    counts: NDArray[np.float64],
    *,
    adaptive: bool,
    spot: bool,
    progress: Callable[[str, float], None] | None,
) -> ManyRun:
    """One policy on one fleet of one type (`counts`: the fleet's columns)."""
    trace, settings, catalog = scenario.trace, scenario.settings, scenario.catalog
    width = trace.bucket_s
    start = float(trace.grid_s[0])
    end = start + counts.shape[0] * width

    def price_of(t: str) -> float | None:
        if not spot:
            return catalog.instance_type(t).on_demand_price_per_hour
        prices = [catalog.spot_price(t, z, start) for z in settings.zones]
        known = [p for p in prices if p is not None]
        return min(known) if known else None

    if not adaptive:  # the seeds place every model, sized for its peak
        settings = replace(settings, cache=False)
        scenario = replace(scenario, settings=settings)
    first = counts[0] / width if adaptive else counts.max(axis=0) / width
    type_name, models = _choose_type(scenario, first, price_of)
    itype = catalog.instance_type(type_name)
    fleet = _Fleet(models, itype, settings)
    entries = [catalog.model(m.profile) for m in scenario.fleet]
    latency = np.array([e.serverless_latency_ms for e in entries])
    spillable = (latency > 0) & (latency <= models.slo_s * 1000.0)
    spill_usd = np.array(
        [
            catalog.lambda_pricing.charge_usd(e.serverless_latency_ms, e.serverless_memory_mb)
            for e in entries
        ]
    )
    serving = _Serving(fleet, spillable, spill_usd)
    run = ManyRun(name, type_name, end - start, serving.requests, serving.good)
    every = max(1, round(settings.replan_s / width))
    forecasters: list[Forecaster] = []
    if adaptive:
        forecasters = [create_forecaster(settings.predictor, bucket_s=width) for _ in models.names]
        for f, c in zip(forecasters, counts[0].tolist(), strict=True):
            f.observe(start - width, c)
    fleet.apply(_plan(models, first, [], fleet.limit_mb, settings, 0), start, warm=True)
    for k in range(counts.shape[0]):
        now = start + k * width
        if adaptive and k > 0 and k % every == 0:
            rates, mean = _forecast(forecasters, every, settings, width)
            run.moves.append(_replan(fleet, models, rates, mean, settings, now))
        fleet.retire(now)
        serving.bucket(counts[k], now, width)
        run.live_by_bucket.append(len(fleet.instances))
        if adaptive:
            for f, c in zip(forecasters, counts[k].tolist(), strict=True):
                f.observe(now, c)
        if progress is not None:
            progress(name, width)
    run.instance_cost_usd = fleet.charge_usd(
        end, _spot_pool(scenario, type_name, start) if spot else None
    )
    run.serverless_cost_usd = serving.serverless_usd
    run.spilled, run.hits = serving.spilled, serving.hits
    run.loads, run.demand_loads, run.launches = fleet.loads, serving.demand_loads, fleet.launches
    run.instance_hours = {type_name: fleet.hours(end)}
    return run


def route_groups(scenario: ManyScenario) -> dict[str, NDArray[np.int64]]:
    """Each route group's models (fleet indices), the rules' groups first, in their order,
    then the fleet file's other groups as they first appear; no empty group."""
    rules = scenario.settings.groups
    labels = [m.group if m.group is not None else group_of(m.name, rules) for m in scenario.fleet]
    order = [*group_names(rules), *labels]
    names = np.array(labels, dtype=object)
    return {g: np.flatnonzero(names == g) for g in dict.fromkeys(order) if (names == g).any()}


def _run(
    scenario: ManyScenario,
    name: str,
    counts: NDArray[np.float64],
    *,
    adaptive: bool,
    spot: bool,
    progress: Callable[[str, float], None] | None,
) -> ManyRun:
    """`_run_group` on each route group's models, added up (one group: the flat fleet's)."""
    groups = route_groups(scenario)
    if len(groups) == 1:
        return _run_group(scenario, name, counts, adaptive=adaptive, spot=spot, progress=progress)

    def tick(label: str, width_s: float) -> None:
        if progress is not None:
            progress(label, width_s / len(groups))

    parts = {}
    budgets = share_moves(scenario.settings.max_moves, list(groups))
    for group, index in groups.items():
        sub = replace(
            scenario,
            fleet=tuple(scenario.fleet[i] for i in index.tolist()),
            settings=replace(scenario.settings, max_moves=budgets[group]),
        )
        parts[group] = _run_group(
            sub, name, counts[:, index], adaptive=adaptive, spot=spot, progress=tick
        )
    n = len(scenario.fleet)
    first = next(iter(parts.values()))
    types = dict.fromkeys(p.instance_type for p in parts.values())
    run = ManyRun(name, "+".join(types), first.duration_s, np.zeros(n), np.zeros(n))
    for group, part in parts.items():
        run.requests_by_model[groups[group]] = part.requests_by_model
        run.good_by_model[groups[group]] = part.good_by_model
        run.instance_cost_usd += part.instance_cost_usd
        run.serverless_cost_usd += part.serverless_cost_usd
        run.spilled += part.spilled
        run.hits += part.hits
        run.loads += part.loads
        run.demand_loads += part.demand_loads
        run.launches += part.launches
        for itype, hours in part.instance_hours.items():
            run.instance_hours[itype] = run.instance_hours.get(itype, 0.0) + hours
    # every group re-plans at the same buckets, and has one count per bucket
    run.moves = [sum(m) for m in zip(*(p.moves for p in parts.values()), strict=True)]
    run.live_by_bucket = [
        sum(k) for k in zip(*(p.live_by_bucket for p in parts.values()), strict=True)
    ]
    run.groups = parts
    return run


def _forecast(
    forecasters: Sequence[Forecaster], horizon: int, settings: ManySettings, width_s: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Each model's rate to place (the upper quantile's largest bucket over the next interval,
    zero where the mean expects fewer than `min_expected_requests` in it), and its mean rate."""
    out = np.zeros(len(forecasters))
    mean = np.zeros(len(forecasters))
    for i, f in enumerate(forecasters):
        fc = f.forecast(horizon, settings.quantile)
        out[i] = placement_rate(fc.mean_rps, fc.upper_rps, width_s, settings.min_expected_requests)
        mean[i] = float(np.mean(fc.mean_rps)) if len(fc.mean_rps) else 0.0
    return out, mean


def _replan(
    fleet: _Fleet,
    models: _Models,
    rates: NDArray[np.float64],
    mean: NDArray[np.float64],
    settings: ManySettings,
    now_s: float,
) -> int:
    """Place `rates` with at most `max_moves` moves (one instance fewer where the others have
    room: `placement_fleet.replan`), apply; the moves."""
    plan = _plan(
        models, rates, fleet.residents(), fleet.limit_mb, settings, settings.max_moves, mean
    )
    fleet.apply(plan, now_s, warm=False)
    return plan.moves


def occupancy_floor_hours(scenario: ManyScenario) -> float:
    """Instance-hours below which no fleet of the scenario's first candidate type serves its
    trace within the SLO in this engine: an instance serves within the SLO only while its
    models' occupancy sums to at most 1, so each bucket needs at least the occupancy of its
    actual requests summed over models (perfect packing, no memory limit, the rates known)."""
    counts = model_counts(scenario.trace, [m.name for m in scenario.fleet])
    width = scenario.trace.bucket_s
    cache = CapacityCache(budget_fraction=scenario.settings.budget_fraction)
    itype = _candidate_types(scenario)[0]
    models = _Models(scenario.fleet, scenario.catalog, itype, cache, scenario.settings, None)
    bucket, model = np.nonzero(counts)
    occ = models.occupancy(model, counts[bucket, model] / width)
    return float(occ.sum()) * width / 3600.0


def simulate_many(
    scenario: ManyScenario,
    names: Sequence[str],
    progress: Callable[[str, float], None] | None = None,
) -> list[ManyRun]:
    """Run the named policies (`MANY_POLICIES`) on the scenario; `mark` runs as mark-ondemand
    and/or mark-spot by the market, `static` on-demand."""
    unknown = [n for n in names if n not in MANY_POLICIES]
    if unknown:
        raise InvalidValue(
            "policies",
            f"unknown {', '.join(unknown)} for a many-model fleet; choose from "
            f"{', '.join(MANY_POLICIES)}",
        )
    counts = model_counts(scenario.trace, [m.name for m in scenario.fleet])
    markets = {"ondemand": (False,), "spot": (True,), "mixed": (False, True)}[scenario.market]
    runs = []
    for name in names:
        if name == "static":
            runs.append(
                _run(scenario, "static", counts, adaptive=False, spot=False, progress=progress)
            )
            continue
        for spot in markets:
            label = "mark-spot" if spot else "mark-ondemand"
            runs.append(_run(scenario, label, counts, adaptive=True, spot=spot, progress=progress))
    return runs
