"""`skyserve`: SkyPilot SkyServe's SpotHedge policy (Mao et al., EuroSys 2025; skypilot-org/
skypilot sky/serve/autoscalers.py `FallbackRequestRateAutoscaler`, sky/serve/spot_placer.py),
the strongest published spot-serving policy (DESIGN.md "Peers").

Parameters and sources:
- Request rate over a 60 s window, decided every 20 s; target replicas =
  ceil(rate / target_qps_per_replica), within [min_replicas, max_replicas]. The user sets
  target_qps_per_replica from a load test: the unbatched capacity at the SLO here (SkyServe
  does not batch).
- Hysteresis: the target moves up only after it has wanted to for upscale_delay_s 300 s, down
  after downscale_delay_s 1200 s (upscale/downscale counters, as in the autoscaler).
- With spot: spot replicas = target + num_overprovision (1: SpotHedge over-provisions), placed
  by the dynamic-fallback spot placer: zones are ACTIVE or PREEMPTED (a reclaim marks its zone;
  when all are preempted all become active again); a new spot replica goes to the active zone
  with the fewest replicas of this service, cheapest first (spread over zones). On-demand
  replicas = base_ondemand_fallback_replicas (0) + max(0, spot wanted - spot READY) (dynamic
  fallback: ready, not launched, because launching spot can fail or lag), at most the target.
  Scale-down removes not-ready replicas first, then the newest.
- It does not use the 2-minute notice: a reclaimed replica's in-flight requests fail (SkyServe
  leaves retries to clients), and the autoscaler sees the loss on its next decision.
- With `--market ondemand` it is the plain request-rate autoscaler on on-demand replicas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from mark.apps.simulator.policies.base import PolicyContext, PolicyDecision
from mark.core.types import Instance, InstanceState, Market, Offering
from provisioner.policy.actions import Action, Drain, Launch

__all__ = ["SkyServePolicy", "SkyServeState"]


@dataclass(frozen=True, slots=True)
class SkyServeState:
    target: int = 0
    upscale_counter: int = 0
    downscale_counter: int = 0


def _scale_down_order(replicas: list[Instance]) -> list[Instance]:
    """Not-ready (pending) replicas first, then the newest, as SkyServe's
    `_select_nonterminal_replicas_to_scale_down` sorts them."""
    return sorted(
        replicas, key=lambda i: (i.state == InstanceState.RUNNING, -i.launched_at_s, i.id)
    )


@dataclass(frozen=True)
class SkyServePolicy:
    instance_type: str
    target_qps_per_replica: float
    use_spot: bool
    name: str = "skyserve"
    qps_window_s: float = 60.0
    interval_s: float = 20.0
    upscale_delay_s: float = 300.0
    downscale_delay_s: float = 1200.0
    min_replicas: int = 1
    max_replicas: int = 1000
    num_overprovision: int = 1
    base_ondemand_fallback_replicas: int = 0
    spill: bool = False
    batching: bool = False
    interruptible: bool = True
    terminates_drained: bool = False

    def initial_state(self) -> SkyServeState:
        return SkyServeState()

    def price_per_hour(self, offering: Offering) -> float:
        return offering.price_per_hour

    def _wanted(self, ctx: PolicyContext) -> int:
        rate = ctx.metrics.arrivals_since(ctx.now_s - self.qps_window_s) / self.qps_window_s
        want = math.ceil(rate / self.target_qps_per_replica - 1e-9)
        return min(max(want, self.min_replicas), self.max_replicas)

    def _hysteresis(self, ctx: PolicyContext, state: SkyServeState) -> SkyServeState:
        want = self._wanted(ctx)
        if state.target == 0:  # first decision: start at the wanted count
            return SkyServeState(target=want)
        up = state.upscale_counter + 1 if want > state.target else 0
        down = state.downscale_counter + 1 if want < state.target else 0
        target = state.target
        if up * self.interval_s >= self.upscale_delay_s:
            target, up = want, 0
        elif down * self.interval_s >= self.downscale_delay_s:
            target, down = want, 0
        return replace(state, target=target, upscale_counter=up, downscale_counter=down)

    def decide(self, ctx: PolicyContext, state: SkyServeState) -> PolicyDecision:
        state = self._hysteresis(ctx, state)
        target = state.target
        active = ctx.active()
        model = ctx.model.name
        actions: list[Action] = []
        if not self.use_spot:
            actions.extend(self._resize(ctx, active, target, Market.ON_DEMAND, "replicas"))
            return PolicyDecision(tuple(actions), state)
        spot = [i for i in active if i.offering.market == Market.SPOT]
        on_demand = [i for i in active if i.offering.market == Market.ON_DEMAND]
        spot_wanted = target + self.num_overprovision
        if len(spot) < spot_wanted:
            placed = list(spot)
            for _ in range(spot_wanted - len(spot)):
                offering = self._place(ctx, placed)
                if offering is None:
                    break
                actions.append(Launch(model, offering, "spot replica (SpotHedge)", 0.0))
                placed.append(Instance(id="planned", offering=offering, launched_at_s=ctx.now_s))
        elif len(spot) > spot_wanted:
            actions.extend(
                Drain(i.id, model, "too many spot replicas")
                for i in _scale_down_order(spot)[: len(spot) - spot_wanted]
            )
        ready_spot = sum(1 for i in spot if i.state == InstanceState.RUNNING)
        od_wanted = self.base_ondemand_fallback_replicas + max(0, spot_wanted - ready_spot)
        od_wanted = min(od_wanted, target)
        actions.extend(self._resize(ctx, on_demand, od_wanted, Market.ON_DEMAND, "fallback"))
        return PolicyDecision(tuple(actions), state)

    def _resize(
        self, ctx: PolicyContext, replicas: list[Instance], wanted: int, market: Market, why: str
    ) -> list[Action]:
        model = ctx.model.name
        if len(replicas) < wanted:
            offering = ctx.offerings.cheapest(self.instance_type, market)
            if offering is None:
                return []
            return [
                Launch(model, offering, f"on-demand {why}", 0.0)
                for _ in range(wanted - len(replicas))
            ]
        return [
            Drain(i.id, model, f"on-demand {why} no longer needed")
            for i in _scale_down_order(replicas)[: len(replicas) - wanted]
        ]

    def _place(self, ctx: PolicyContext, placed: list[Instance]) -> Offering | None:
        """The dynamic-fallback placer: active zones (not preempted since their last launch
        here), fewest replicas of ours first, then cheapest."""
        rows = [
            o
            for o in ctx.offerings.available()
            if o.instance_type == self.instance_type and o.market == Market.SPOT
        ]
        if not rows:
            return None
        last_launch: dict[str, float] = {}
        for inst in ctx.instances:
            key = inst.offering.key
            last_launch[key] = max(last_launch.get(key, -math.inf), inst.launched_at_s)
        active = [
            o
            for o in rows
            if ctx.reclaimed.get(o.key, -math.inf) <= last_launch.get(o.key, -1)
            or o.key not in ctx.reclaimed
        ]
        if not active:
            active = rows  # every zone preempted: all become active again
        used = {o.key: 0 for o in active}
        for inst in placed:
            if inst.offering.key in used:
                used[inst.offering.key] += 1
        return min(active, key=lambda o: (used[o.key], o.price_per_hour, o.key))
