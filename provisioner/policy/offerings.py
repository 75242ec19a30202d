"""The offerings Mark can buy from, as one collection (after Karpenter's `Offerings`): the
provider's list, every offering kept (an unavailable one stays listed so that a decision can say
why it was skipped), with the pools Mark itself avoids marked unavailable.

A pool is avoided while it cools down after an interruption (`PlannerState.preempted_pools`) or a
capacity refusal (`PlannerState.refused_pools`), for `PlannerConfig.pool_cooldown_s` either way.
The planner, the simulator's baselines and `mark plan` query this one collection, so a pool the
control loop saw refuse is out of every query until its cooldown ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from mark.core.types import Market, Offering

__all__ = ["Offerings", "cooling_pools"]


def cooling_pools(
    since_s: Mapping[str, float], now_s: float, cooldown_s: float
) -> dict[str, float]:
    """The pools of `since_s` (key -> when it was interrupted or refused) still cooling down."""
    return {key: at for key, at in since_s.items() if now_s - at < cooldown_s}


@dataclass(frozen=True, slots=True)
class Offerings:
    """`listed`: the provider's offerings as given; `avoided`: pool keys Mark does not buy from
    now (cooling down), whatever the provider says."""

    listed: tuple[Offering, ...]
    avoided: frozenset[str] = frozenset()

    @classmethod
    def of(cls, listed: Iterable[Offering], avoided: Iterable[str] = ()) -> Offerings:
        return cls(tuple(listed), frozenset(avoided))

    def avoiding(self, keys: Iterable[str]) -> Offerings:
        """The same listing with the pools `keys` avoided too."""
        return Offerings(self.listed, self.avoided | frozenset(keys))

    def is_available(self, offering: Offering) -> bool:
        return offering.available and offering.key not in self.avoided

    def available(self) -> tuple[Offering, ...]:
        """The offerings that can be bought now, in the provider's order."""
        return tuple(o for o in self.listed if self.is_available(o))

    def prices(self) -> dict[str, float]:
        """Current price per pool key, unavailable pools included (a live spot instance pays
        its pool's price whether or not Mark would buy there now)."""
        return {o.key: o.price_per_hour for o in self.listed}

    def spot_pools(self) -> set[str]:
        """Keys of every listed spot pool."""
        return {o.key for o in self.listed if o.market == Market.SPOT}

    def cheapest(
        self,
        instance_type: str | None = None,
        market: Market | None = None,
        prefer_not: Iterable[str] = (),
    ) -> Offering | None:
        """The cheapest available offering (of `instance_type` and `market` when given), those
        in pools of `prefer_not` (already used, say) only when nothing else is left; ties go to
        the lowest key, so the choice is deterministic. None when none is available."""
        rows = [
            o
            for o in self.listed
            if self.is_available(o)
            and (instance_type is None or o.instance_type == instance_type)
            and (market is None or o.market == market)
        ]
        if not rows:
            return None
        second = frozenset(prefer_not)
        return min(rows, key=lambda o: (o.key in second, o.price_per_hour, o.key))

    def cheapest_price_per_hour(self, instance_type: str, market: Market) -> float | None:
        found = self.cheapest(instance_type, market)
        return None if found is None else found.price_per_hour
