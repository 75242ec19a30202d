"""The validated catalog and its lookups: instance types, models, spot prices in force and the
offerings the planner chooses from."""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from mark.core.catalog.checks import unknown
from mark.core.catalog.files import INSTANCE_TYPES_FILE, SPOT_FILE
from mark.core.catalog.spot_prices import SpotPool, SpotPricePoint, history_span
from mark.core.catalog.values import LambdaPricing, ModelEntry, band_rate_per_hour
from mark.core.errors import InvalidValue, NotFound
from mark.core.types import InstanceType, Market, Offering

__all__ = [
    "Catalog",
]


@dataclass(frozen=True)
class Catalog:
    """Everything the catalog files say, validated. Lookups raise NotFound for unknown names."""

    instance_types: Mapping[str, InstanceType]
    models: Mapping[str, ModelEntry]
    lambda_pricing: LambdaPricing
    spot_history: tuple[SpotPricePoint, ...]
    sagemaker_price_per_hour: Mapping[str, float]
    sources: Mapping[str, str]
    interruption_bands: Mapping[str, str]
    _pools: Mapping[tuple[str, str], SpotPool] = field(init=False, repr=False, compare=False)
    _spot_start_s: float = field(init=False, repr=False, compare=False)
    _spot_span_s: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        grouped: dict[tuple[str, str], list[SpotPricePoint]] = {}
        for point in self.spot_history:
            grouped.setdefault((point.instance_type, point.zone), []).append(point)
        pools = {}
        for key, points in grouped.items():
            points.sort(key=lambda p: p.timestamp_s)
            pools[key] = SpotPool(
                tuple(p.timestamp_s for p in points), tuple(p.price_per_hour for p in points)
            )
        start_s, span_s = history_span(list(pools.values()))
        object.__setattr__(self, "_pools", MappingProxyType(pools))
        object.__setattr__(self, "_spot_start_s", start_s)
        object.__setattr__(self, "_spot_span_s", span_s)

    def instance_type(self, name: str) -> InstanceType:
        try:
            return self.instance_types[name]
        except KeyError:
            raise NotFound(unknown("instance type", name, self.instance_types)) from None

    def model(self, name: str) -> ModelEntry:
        try:
            return self.models[name]
        except KeyError:
            raise NotFound(unknown("model", name, self.models)) from None

    def interruption_rate_per_hour(self, instance_type: str) -> float:
        """Spot interruptions per instance-hour of the type, from its Spot Advisor band in
        `spot_advisor.json` (`band_rate_per_hour`)."""
        self.instance_type(instance_type)
        return band_rate_per_hour(self.interruption_bands[instance_type])

    def spot_price(self, instance_type: str, zone: str, at_s: float) -> float | None:
        """The spot price in force at `at_s` in the pool, None where the history has no data for
        it. The history repeats with its own period (its span plus one step), so any `at_s`,
        before or after the sample, reads a price."""
        self.instance_type(instance_type)
        if not math.isfinite(at_s):
            raise InvalidValue("at_s", f"must be a finite time, got {at_s!r}")
        pool = self._pools.get((instance_type, zone))
        if pool is None:
            return None
        wrapped_s = self._spot_start_s + (at_s - self._spot_start_s) % self._spot_span_s
        index = bisect.bisect_right(pool.times_s, wrapped_s) - 1
        # index -1 (before the pool's first point): the previous cycle's last price holds.
        return pool.prices_per_hour[index]

    def offerings(
        self,
        zones: Sequence[str],
        at_s: float | None = None,
        spot: bool = True,
        types: Sequence[str] = (),
    ) -> list[Offering]:
        """Every (type, zone) on-demand offering at the list price, then, with `spot`, the spot
        offering at the price in force at `at_s` (the latest sample when None) where the
        history has that pool. Ordered by type (catalog order, or `types`' order), then zone,
        on-demand before spot. Unknown types raise NotFound."""
        names = list(types) if types else list(self.instance_types)
        on_demand_source = f"catalog/{INSTANCE_TYPES_FILE} {self._date(INSTANCE_TYPES_FILE)}"
        spot_source = f"catalog/{SPOT_FILE} (estimated sample) {self._date(SPOT_FILE)}"
        out: list[Offering] = []
        for name in names:
            itype = self.instance_type(name)
            for zone in dict.fromkeys(zones):
                out.append(
                    Offering(
                        instance_type=name,
                        zone=zone,
                        market=Market.ON_DEMAND,
                        price_per_hour=itype.on_demand_price_per_hour,
                        source=on_demand_source,
                    )
                )
                if not spot:
                    continue
                price = (
                    self._latest_spot(name, zone)
                    if at_s is None
                    else self.spot_price(name, zone, at_s)
                )
                if price is not None:
                    out.append(
                        Offering(
                            instance_type=name,
                            zone=zone,
                            market=Market.SPOT,
                            price_per_hour=price,
                            source=spot_source,
                        )
                    )
        return out

    def _date(self, file: str) -> str:
        """The date half of a `source; date` line."""
        return self.sources.get(file, "").rpartition("; ")[2]

    def _latest_spot(self, instance_type: str, zone: str) -> float | None:
        pool = self._pools.get((instance_type, zone))
        return None if pool is None else pool.prices_per_hour[-1]
