"""`oracle`: a lower bound on the cost of meeting the SLO with perfect knowledge of the trace.

The cheapest capacity that covers each bucket's rate at the SLO, solved exactly as a MILP
(scipy.optimize.milp, HiGHS):

    min  sum_t sum_k n_kt P_kt d/3600 + u_kt P_kt O_k/3600  +  sum_t s_t d F
    s.t. sum_k n_kt C_k + s_t >= r_t                  (every bucket's rate covered)
         u_kt >= n_kt - n_k,t-1,  u_kt >= 0           (starts pay their launch overhead O_k)
         n_kt integer >= 0,  0 <= s_t (<= r_t; 0 when the serverless latency misses the SLO)

k ranges over instance types x markets (spot, when the run allows it, at the cheapest zone's
price of each hour of the catalog's history), C_k is the capacity at the SLO
(`provisioner.policy.capacity`), d the bucket length (60 s: EC2's 60 s billing minimum is met by
every
bucket), F the serverless price per request (Lambda's, at the model's serverless latency). The
fleet of the first bucket starts warm, as every policy's does. Types dominated on both price and
capacity in every hour are dropped before solving; `mip_rel_gap` bounds the distance to optimal
and the solver's dual bound is reported as `lower_bound_usd`.

Replayed in the simulator, the oracle launches each start O_k before its bucket, drains at the
bucket where its count drops, sends the serverless share of arrivals straight to the pool, and
knows which spot instances the cloud will reclaim (it is not interrupted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from mark.apps.simulator.policies.base import PolicyContext, PolicyDecision
from mark.core.catalog import Catalog
from mark.core.types import InstanceState, Market, Model, Offering
from provisioner.policy.actions import Action, Drain, Launch
from provisioner.policy.capacity import CapacityCache, slo_capacity
from provisioner.policy.prewarm import warm_functions

__all__ = ["OracleSchedule", "OraclePolicy", "solve_oracle"]


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


def _spot_prices(catalog: Catalog, type_name: str, zones: tuple[str, ...], starts: np.ndarray):
    out = np.full(starts.size, np.inf)
    for zone in zones:
        for i, t in enumerate(starts.tolist()):
            price = catalog.spot_price(type_name, zone, t)
            if price is not None:
                out[i] = min(out[i], price)
    return out


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
    starts = start_s + bucket_s * np.arange(nb)
    cands: list[tuple[str, Market]] = []
    caps: list[float] = []
    prices: list[np.ndarray] = []
    overheads: list[float] = []
    for name in types:
        profile = model.profiles.get(name)
        if profile is None:
            continue
        cap = slo_capacity(profile, model.slo, model.max_batch, cache).rate_rps
        if cap <= 0:
            continue
        itype = catalog.instance_type(name)
        rows = [(Market.ON_DEMAND, np.full(nb, itype.on_demand_price_per_hour))]
        if spot:
            sp = _spot_prices(catalog, name, zones, starts)
            if np.isfinite(sp).all():
                rows.append((Market.SPOT, sp))
        for market, price in rows:
            cands.append((name, market))
            caps.append(cap)
            prices.append(price)
            overheads.append(itype.launch_overhead_s)
    # Drop candidates that another beats on capacity and price in every bucket.
    keep = []
    for i in range(len(cands)):
        dominated = any(
            j != i
            and caps[j] >= caps[i]
            and bool(np.all(prices[j] <= prices[i]))
            and (caps[j] > caps[i] or bool(np.any(prices[j] < prices[i])) or j < i)
            for j in range(len(cands))
        )
        if not dominated:
            keep.append(i)
    cands = [cands[i] for i in keep]
    caps_a = np.array([caps[i] for i in keep])
    price_a = np.array([prices[i] for i in keep])  # k x t
    over_a = np.array([overheads[i] for i in keep])
    k = len(cands)
    n_var = k * nb  # n_kt, index k*nb + t
    u_off = n_var  # u_kt
    s_off = 2 * n_var  # s_t
    total = 2 * n_var + nb
    cost = np.zeros(total)
    cost[:n_var] = (price_a * bucket_s / 3600.0).ravel()
    cost[u_off : u_off + n_var] = (price_a * over_a[:, None] / 3600.0).ravel()
    serverless_ok = serverless_usd_per_request is not None
    cost[s_off:] = (serverless_usd_per_request or 0.0) * bucket_s
    rows_i: list[np.ndarray] = []
    cols_i: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    t_idx = np.arange(nb)
    # Coverage rows 0..nb-1.
    for j in range(k):
        rows_i.append(t_idx)
        cols_i.append(j * nb + t_idx)
        vals.append(np.full(nb, caps_a[j]))
    rows_i.append(t_idx)
    cols_i.append(s_off + t_idx)
    vals.append(np.ones(nb))
    # Start rows: u_kt - n_kt + n_k,t-1 >= 0 for t >= 1.
    row = nb
    for j in range(k):
        t1 = np.arange(1, nb)
        r = row + np.arange(nb - 1)
        rows_i += [r, r, r]
        cols_i += [u_off + j * nb + t1, j * nb + t1, j * nb + t1 - 1]
        vals += [np.ones(nb - 1), -np.ones(nb - 1), np.ones(nb - 1)]
        row += nb - 1
    a = coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows_i), np.concatenate(cols_i))),
        shape=(row, total),
    ).tocsr()
    lower = np.concatenate([rates_rps, np.zeros(row - nb)])
    constraint = LinearConstraint(a, lower, np.inf)
    upper = np.full(total, np.inf)
    upper[s_off:] = rates_rps if serverless_ok else 0.0
    integrality = np.zeros(total)
    integrality[:n_var] = 1
    result = milp(
        cost,
        constraints=constraint,
        integrality=integrality,
        bounds=Bounds(np.zeros(total), upper),
        options={"time_limit": time_limit_s, "mip_rel_gap": mip_rel_gap},
    )
    if result.x is None:
        raise RuntimeError(f"oracle MILP found no solution: {result.message}")
    x = result.x
    counts = np.rint(x[:n_var]).reshape(k, nb).astype(np.int64)
    bound = getattr(result, "mip_dual_bound", None)
    return OracleSchedule(
        start_s=start_s,
        bucket_s=bucket_s,
        candidates=tuple(cands),
        counts=counts,
        serverless_rps=np.maximum(x[s_off:], 0.0),
        rates_rps=rates_rps,
        objective_usd=float(result.fun),
        lower_bound_usd=float(bound)
        if bound is not None and math.isfinite(bound)
        else float(result.fun),
        overheads_s=tuple(float(o) for o in over_a),
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
