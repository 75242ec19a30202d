"""`oracle`: the cheapest plan for the trace at the planner's capacity model, with perfect
knowledge of it, replayed as a policy.

The cheapest capacity that covers each bucket's rate at the SLO, solved exactly as a MILP
(scipy.optimize.milp, HiGHS):

    min  sum_t sum_k n_kt P_kt d/3600 + u_kt P_kt O_k/3600  +  sum_t s_t d F
    s.t. sum_k n_kt C_k + s_t >= r_t                  (every bucket's rate covered)
         u_kt >= n_kt - n_k,t-1,  u_kt >= 0           (starts pay their launch overhead O_k)
         n_kt integer >= 0,  0 <= s_t (<= r_t; 0 when the serverless latency misses the SLO)

k ranges over instance types x markets (spot, when the run allows it, at the cheapest zone's
price of each hour of the catalog's history), C_k is the capacity at the SLO
(`provisioner.policy.capacity`), d the bucket length (60 s: EC2's 60 s billing minimum is met by
every bucket), F the serverless price per request (Lambda's, at the model's serverless latency).
The fleet of the first bucket starts warm, as every policy's does. Types dominated on both price
and capacity in every bucket are dropped before solving; `mip_rel_gap` bounds the distance to
optimal and the solver's dual bound on this program is reported as `lower_bound_usd`. That is a
bound on the oracle's own program (its capacity model, its launch overheads), not on what other
policies can pay: `mark.apps.simulator.lower_bound` is that bound, built by the same
`fleet_candidates` and `fleet_program` with its own capacities and without the overhead terms.

Replayed in the simulator, the oracle launches each start O_k before its bucket, drains at the
bucket where its count drops, sends the serverless share of arrivals straight to the pool, and
knows which spot instances the cloud will reclaim (it is not interrupted).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, OptimizeResult, milp
from scipy.sparse import coo_matrix, csr_matrix

from mark.apps.simulator.policies.base import PolicyContext, PolicyDecision
from mark.core.catalog import Catalog
from mark.core.types import InstanceState, Market, Model, Offering, Profile
from provisioner.policy.actions import Action, Drain, Launch
from provisioner.policy.billing import _SPOT_STEP_S
from provisioner.policy.capacity import CapacityCache, slo_capacity
from provisioner.policy.prewarm import warm_functions

__all__ = [
    "FleetCandidate",
    "FleetProgram",
    "OracleSchedule",
    "OraclePolicy",
    "fleet_candidates",
    "dual_bound_usd",
    "fleet_program",
    "solve_oracle",
]


@dataclass(frozen=True)
class OracleSchedule:
    """The solved plan: per candidate (type, market) the instance count of every bucket."""

    start_s: float
    bucket_s: float
    candidates: tuple[tuple[str, Market], ...]
    counts: np.ndarray  # candidates x buckets
    serverless_rps: np.ndarray
    rates_rps: np.ndarray
    objective_usd: float
    lower_bound_usd: float
    overheads_s: tuple[float, ...] = field(default=())

    def bucket_of(self, t_s: float) -> int:
        index = int(math.floor((t_s - self.start_s) / self.bucket_s + 1e-9))
        return min(max(index, 0), self.counts.shape[1] - 1)


@dataclass(frozen=True)
class FleetCandidate:
    """One way to buy capacity in the program: a type in a market, what one instance of it
    serves (`capacity_rps`), its price in every bucket and its launch overhead."""

    instance_type: str
    market: Market
    capacity_rps: float
    prices_per_hour: np.ndarray  # one per bucket
    overhead_s: float


@dataclass(frozen=True)
class FleetProgram:
    """A fleet MILP for `scipy.optimize.milp`, with its column layout: n_kt at k*nb + t, the
    starts u_kt (with launch overheads) from `u_off`, the serverless rates s_t from `s_off`,
    the missed rates m_t (with a miss allowance) from `m_off`."""

    candidates: tuple[FleetCandidate, ...]
    buckets: int
    cost: np.ndarray
    constraint: LinearConstraint
    bounds: Bounds
    integrality: np.ndarray
    s_off: int
    m_off: int | None

    def solve(self, *, integral: bool, time_limit_s: float, mip_rel_gap: float) -> OptimizeResult:
        """HiGHS on the program, or on its LP relaxation when not `integral`."""
        return milp(
            self.cost,
            constraints=self.constraint,
            integrality=self.integrality if integral else np.zeros_like(self.integrality),
            bounds=self.bounds,
            options={"time_limit": time_limit_s, "mip_rel_gap": mip_rel_gap},
        )


def _spot_prices(
    catalog: Catalog, type_name: str, zones: tuple[str, ...], starts: np.ndarray, bucket_s: float
) -> np.ndarray:
    """The cheapest zone's spot price in each bucket: the lowest price of the history steps the
    bucket touches (billing integrates the history in those steps, so no instance of the type
    pays less in that bucket), inf where no zone has a history."""
    out = np.full(starts.size, np.inf)
    for i, t0 in enumerate(starts.tolist()):
        edges = [t0]
        step = (math.floor(t0 / _SPOT_STEP_S) + 1) * _SPOT_STEP_S
        while step < t0 + bucket_s - 1e-9:
            edges.append(step)
            step += _SPOT_STEP_S
        for zone in zones:
            for t in edges:
                price = catalog.spot_price(type_name, zone, t)
                if price is not None:
                    out[i] = min(out[i], price)
    return out


def fleet_candidates(
    model: Model,
    catalog: Catalog,
    starts: np.ndarray,
    bucket_s: float,
    *,
    spot: bool,
    zones: tuple[str, ...],
    types: tuple[str, ...],
    capacity_rps: Callable[[Profile], float],
) -> tuple[FleetCandidate, ...]:
    """Every type that serves the model (`capacity_rps` of its profile > 0) on demand and, with
    `spot`, in the spot market where some zone has a price in every bucket; without those that
    another beats on capacity and on price in every bucket (replacing them never costs more)."""
    found: list[FleetCandidate] = []
    for name in types:
        profile = model.profiles.get(name)
        if profile is None:
            continue
        cap = capacity_rps(profile)
        if cap <= 0:
            continue
        itype = catalog.instance_type(name)
        rows = [(Market.ON_DEMAND, np.full(starts.size, itype.on_demand_price_per_hour))]
        if spot:
            sp = _spot_prices(catalog, name, zones, starts, bucket_s)
            if np.isfinite(sp).all():
                rows.append((Market.SPOT, sp))
        found.extend(
            FleetCandidate(name, market, cap, price, itype.launch_overhead_s)
            for market, price in rows
        )

    def dominated(i: int) -> bool:
        me = found[i]
        return any(
            j != i
            and other.capacity_rps >= me.capacity_rps
            and bool(np.all(other.prices_per_hour <= me.prices_per_hour))
            and (
                other.capacity_rps > me.capacity_rps
                or bool(np.any(other.prices_per_hour < me.prices_per_hour))
                or j < i
            )
            for j, other in enumerate(found)
        )

    return tuple(c for i, c in enumerate(found) if not dominated(i))


def fleet_program(
    candidates: tuple[FleetCandidate, ...],
    rates_rps: np.ndarray,
    bucket_s: float,
    serverless_usd_per_request: float | None,
    *,
    launch_overheads: bool,
    miss_allowance: float | None = None,
) -> FleetProgram:
    """The fleet MILP over integer counts n_kt (see the module docstring):

        min  sum n_kt P_kt d/3600 [+ u_kt P_kt O_k/3600]  +  sum s_t d F
        s.t. sum_k n_kt C_k + s_t [+ m_t] >= r_t
             [u_kt >= n_kt - n_k,t-1]                      (`launch_overheads`)
             [sum_t m_t d <= miss_allowance, 0 <= m_t <= r_t]  (`miss_allowance`: requests
                                                           that may go unserved in all)

    Serverless is bounded by the rate (0 when `serverless_usd_per_request` is None)."""
    nb = rates_rps.size
    k = len(candidates)
    caps = np.array([c.capacity_rps for c in candidates])
    prices = np.array([c.prices_per_hour for c in candidates]).reshape(k, nb)
    n_var = k * nb
    u_off = n_var
    s_off = u_off + (n_var if launch_overheads else 0)
    m_off = s_off + nb if miss_allowance is not None else None
    total = s_off + nb + (nb if m_off is not None else 0)
    cost = np.zeros(total)
    cost[:n_var] = (prices * bucket_s / 3600.0).ravel()
    if launch_overheads:
        overheads = np.array([c.overhead_s for c in candidates])
        cost[u_off:s_off] = (prices * overheads[:, None] / 3600.0).ravel()
    cost[s_off : s_off + nb] = (serverless_usd_per_request or 0.0) * bucket_s
    t_idx = np.arange(nb)
    # Coverage rows 0..nb-1.
    rows_i = [t_idx for _ in range(k)] + [t_idx]
    cols_i = [j * nb + t_idx for j in range(k)] + [s_off + t_idx]
    vals = [np.full(nb, caps[j]) for j in range(k)] + [np.ones(nb)]
    lower = [rates_rps]
    upper = [np.full(nb, np.inf)]
    row = nb
    if launch_overheads:
        # Start rows: u_kt - n_kt + n_k,t-1 >= 0 for t >= 1.
        t1 = np.arange(1, nb)
        for j in range(k):
            r = row + np.arange(nb - 1)
            rows_i += [r, r, r]
            cols_i += [u_off + j * nb + t1, j * nb + t1, j * nb + t1 - 1]
            vals += [np.ones(nb - 1), -np.ones(nb - 1), np.ones(nb - 1)]
            row += nb - 1
        lower.append(np.zeros(row - nb))
        upper.append(np.full(row - nb, np.inf))
    if m_off is not None:
        rows_i += [t_idx, np.full(nb, row)]
        cols_i += [m_off + t_idx, m_off + t_idx]
        vals += [np.ones(nb), np.full(nb, bucket_s)]
        lower.append(np.array([-np.inf]))
        upper.append(np.array([miss_allowance]))
        row += 1
    a: csr_matrix = coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows_i), np.concatenate(cols_i))),
        shape=(row, total),
    ).tocsr()
    var_upper = np.full(total, np.inf)
    var_upper[s_off : s_off + nb] = rates_rps if serverless_usd_per_request is not None else 0.0
    if m_off is not None:
        var_upper[m_off:] = rates_rps
    integrality = np.zeros(total)
    integrality[:n_var] = 1
    return FleetProgram(
        candidates=candidates,
        buckets=nb,
        cost=cost,
        constraint=LinearConstraint(a, np.concatenate(lower), np.concatenate(upper)),
        bounds=Bounds(np.zeros(total), var_upper),
        integrality=integrality,
        s_off=s_off,
        m_off=m_off,
    )


def dual_bound_usd(result: OptimizeResult) -> float:
    """HiGHS's dual bound on the program (valid when the time limit stopped the search), or the
    objective where it gives none (an LP, or a MILP solved to optimality)."""
    bound = getattr(result, "mip_dual_bound", None)
    if bound is not None and math.isfinite(bound):
        return float(bound)
    return float(result.fun)


def solve_oracle(
    model: Model,
    rates_rps: np.ndarray,
    start_s: float,
    bucket_s: float,
    catalog: Catalog,
    *,
    spot: bool,
    zones: tuple[str, ...],
    types: tuple[str, ...],
    serverless_usd_per_request: float | None,
    cache: CapacityCache | None = None,
    time_limit_s: float = 60.0,
    mip_rel_gap: float = 1e-3,
) -> OracleSchedule:
    cache = cache or CapacityCache()
    nb = rates_rps.size
    cands = fleet_candidates(
        model,
        catalog,
        start_s + bucket_s * np.arange(nb),
        bucket_s,
        spot=spot,
        zones=zones,
        types=types,
        capacity_rps=lambda p: slo_capacity(p, model.slo, model.max_batch, cache).rate_rps,
    )
    program = fleet_program(
        cands, rates_rps, bucket_s, serverless_usd_per_request, launch_overheads=True
    )
    result = program.solve(integral=True, time_limit_s=time_limit_s, mip_rel_gap=mip_rel_gap)
    if result.x is None:
        raise RuntimeError(f"oracle MILP found no solution: {result.message}")
    x = result.x
    counts = np.rint(x[: len(cands) * nb]).reshape(len(cands), nb).astype(np.int64)
    return OracleSchedule(
        start_s=start_s,
        bucket_s=bucket_s,
        candidates=tuple((c.instance_type, c.market) for c in cands),
        counts=counts,
        serverless_rps=np.maximum(x[program.s_off : program.s_off + nb], 0.0),
        rates_rps=rates_rps,
        objective_usd=float(result.fun),
        lower_bound_usd=dual_bound_usd(result),
        overheads_s=tuple(c.overhead_s for c in cands),
    )


@dataclass(frozen=True)
class OraclePolicy:
    schedule: OracleSchedule
    serverless_latency_ms: float = 0.0
    name: str = "oracle"
    interval_s: float = 10.0
    spill: bool = True
    batching: bool = True
    interruptible: bool = False
    terminates_drained: bool = False

    def initial_state(self) -> None:
        return None

    def price_per_hour(self, offering: Offering) -> float:
        return offering.price_per_hour

    def decide(self, ctx: PolicyContext, state: None) -> PolicyDecision:
        sched = self.schedule
        now = ctx.now_s
        model = ctx.model.name
        actions: list[Action] = []
        for j, (type_name, market) in enumerate(sched.candidates):
            mine = [
                i
                for i in ctx.active()
                if i.offering.instance_type == type_name and i.offering.market == market
            ]
            current = int(sched.counts[j, sched.bucket_of(now)])
            ahead = int(sched.counts[j, sched.bucket_of(now + sched.overheads_s[j])])
            first = now <= sched.start_s + 1e-9
            wanted_live = current if first else max(current, ahead)
            if len(mine) < wanted_live:
                offering = ctx.offerings.cheapest(type_name, market)
                if offering is not None:
                    actions.extend(
                        Launch(model, offering, "oracle schedule", 0.0)
                        for _ in range(wanted_live - len(mine))
                    )
            elif len(mine) > wanted_live:
                order = sorted(
                    mine, key=lambda i: (i.state == InstanceState.RUNNING, -i.launched_at_s, i.id)
                )
                actions.extend(
                    Drain(i.id, model, "oracle schedule") for i in order[: len(mine) - wanted_live]
                )
        b = sched.bucket_of(now)
        rate = float(sched.rates_rps[b])
        share = float(sched.serverless_rps[b]) / rate if rate > 0 else 0.0
        # It knows what spills: all of that is the gap the pool must take.
        warm = warm_functions(float(sched.serverless_rps[b]), 0.0, self.serverless_latency_ms)
        return PolicyDecision(tuple(actions), None, warm_functions=warm, serverless_share=share)
