"""What an instance costs, in one place: when billing starts, what has been paid for, what a
spot instance pays now and over its life (DESIGN.md: EC2 bills per second with a 60 s minimum).

The rounding (minimum, then granularity) is `InstanceType.billed_s`, on the value itself. Every
reader of money uses these functions: the planner (paid time, hourly spend), the control loop's
ledger, the simulator's bill and `mark plan`'s spend line, so that what the planner expects to pay
and what the ledger records follow the same rules.

Billing runs from the launch (`launched_at_s`): EC2 bills from its "running" state, which comes
seconds after RunInstances, while Mark's RUNNING waits for the worker to boot and load; the boot
is paid for, so the launch is the closer start, and it is the one the ledger records.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from mark.core.types import Instance, InstanceType, Market

__all__ = [
    "billed_from_s",
    "paid_until_s",
    "price_now",
    "period_charge_usd",
    "split_charge",
    "spot_charge_usd",
]

# Spot price histories change at most hourly in the catalog: integrate in steps of this.
_SPOT_STEP_S = 3600.0


def billed_from_s(instance: Instance) -> float:
    """When the cloud starts billing `instance`: at its launch (see the module docstring)."""
    return instance.launched_at_s


def paid_until_s(instance: Instance, itype: InstanceType, now_s: float) -> float:
    """End of the time already bought: the billed time of what ran up to now (at least the
    minimum, in steps of the granularity; per second after the first minute on EC2 Linux, so
    then this is ~now)."""
    start = billed_from_s(instance)
    return start + itype.billed_s(max(now_s - start, 1e-9))


def price_now(instance: Instance, prices: Mapping[str, float]) -> float:
    """What a live instance costs per hour now, given the offerings' current prices by key: a
    spot instance pays its pool's current price (EC2 bills spot at the market price, not at the
    price it was launched at), so it is compared with a new launch in the same pool at the same
    price; on-demand pays its offering's price."""
    if instance.offering.market == Market.SPOT:
        return prices.get(instance.offering.key, instance.offering.price_per_hour)
    return instance.offering.price_per_hour


def period_charge_usd(
    itype: InstanceType, billed_before_s: float, billed_until_s: float, price_per_hour: float
) -> float:
    """What an instance's running from `billed_before_s` to `billed_until_s` (seconds since its
    billing start) adds to its bill at `price_per_hour`, the price in force over that period
    (`price_now`: a spot price moves, and EC2 bills the market price of each period, not the
    launch price). The type's rounding applies to the running total, so at one price the
    periods add up to the whole run's charge; the ledger adds one period per sync."""
    before = itype.charge_usd(max(billed_before_s, 0.0), price_per_hour)
    return max(itype.charge_usd(max(billed_until_s, 0.0), price_per_hour) - before, 0.0)


def split_charge(
    usd: float, busy_s: Mapping[str, float], models: Sequence[str]
) -> dict[str, float]:
    """Share one instance's charge for a period among the models it served, in proportion to
    the seconds its batches of each model were in service (`busy_s`, what the front ends
    recorded for that period): a many-model instance costs each model what it used. With no
    busy time recorded (idle, loading, or nothing reported yet) the instance's listed `models`
    share it equally; an instance with neither charges the model named "". The parts sum to
    `usd` and none is negative."""
    weights = {m: s for m, s in busy_s.items() if s > 0}
    if not weights:
        weights = dict.fromkeys(models or [""], 1.0)
    total = math.fsum(weights.values())
    # the share first: usd * w of a subnormal busy time would round away most of its bits
    parts = {m: usd * (w / total) for m, w in weights.items()}
    # The largest part absorbs the rounding, so the parts add up to `usd` to the last bit.
    largest = max(parts, key=lambda m: (parts[m], m))
    parts[largest] = max(usd - math.fsum(p for m, p in parts.items() if m != largest), 0.0)
    return parts


def spot_charge_usd(
    itype: InstanceType,
    start_s: float,
    end_s: float,
    price_at: Callable[[float], float | None],
) -> float:
    """What a spot instance costs from `start_s` to `end_s`: the price in force (`price_at`,
    None where the history has none: on-demand then), integrated over the history's hourly
    steps, with the type's billing rounding applied to the total."""
    seconds = max(end_s - start_s, 0.0)
    if seconds <= 0:
        return 0.0
    edges = [start_s]
    t = (math.floor(start_s / _SPOT_STEP_S) + 1) * _SPOT_STEP_S
    while t < end_s:
        edges.append(t)
        t += _SPOT_STEP_S
    edges.append(end_s)
    dollars = 0.0
    for a, b in zip(edges, edges[1:], strict=False):
        price = price_at(a)
        dollars += (b - a) * (price if price is not None else itype.on_demand_price_per_hour)
    return itype.charge_usd(seconds, dollars / seconds)
