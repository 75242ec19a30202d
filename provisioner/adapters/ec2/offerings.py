"""EC2's answers about types, zones and prices turned into Mark's `InstanceType` and `Offering`
values: plain functions of the API rows, so `Ec2Cloud` only makes the calls.

On-demand prices come from the catalog (EC2's API has none); spot prices are the latest of
DescribeSpotPriceHistory per (type, zone). Every (type, zone, market) is listed; one that can't
be had now is marked unavailable (Karpenter's rule), and which pools refused a launch lately is
the planner's to remember, not the provider's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from mark.core.types import AcceleratorKind, InstanceType, Market, Offering

__all__ = [
    "SPOT_PRODUCTS",
    "SPOT_SOURCE",
    "timestamp_s",
    "zones_by_type",
    "described_type",
    "latest_spot_prices",
    "pool_offerings",
]

# The product descriptions of Linux spot prices (EC2-Classic's and VPC's spellings).
SPOT_PRODUCTS = ("Linux/UNIX", "Linux/UNIX (Amazon VPC)")
SPOT_SOURCE = "EC2 DescribeSpotPriceHistory"


def timestamp_s(value: Any) -> float:
    """Seconds since the epoch from a botocore datetime (or a number already)."""
    return value.timestamp() if isinstance(value, datetime) else float(value)


def zones_by_type(
    rows: Iterable[Mapping[str, Any]], zones: Sequence[str]
) -> dict[str, frozenset[str]]:
    """The configured zones each type is offered in (DescribeInstanceTypeOfferings rows)."""
    wanted = set(zones)
    found: dict[str, set[str]] = {}
    for row in rows:
        if row["Location"] in wanted:
            found.setdefault(row["InstanceType"], set()).add(row["Location"])
    return {name: frozenset(where) for name, where in found.items()}


def described_type(catalog_type: InstanceType, row: Mapping[str, Any]) -> InstanceType:
    """The catalog's type (its price and profile key) with vCPUs, memory and accelerators as
    one DescribeInstanceTypes row reports them; GPUs first, then Inferentia/Neuron devices."""
    gpus = sum(g.get("Count", 0) for g in row.get("GpuInfo", {}).get("Gpus", []))
    inferentia = sum(
        a.get("Count", 0) for a in row.get("InferenceAcceleratorInfo", {}).get("Accelerators", [])
    ) + sum(n.get("Count", 0) for n in row.get("NeuronInfo", {}).get("NeuronDevices", []))
    kind, count = (
        (AcceleratorKind.GPU, gpus)
        if gpus
        else (AcceleratorKind.INFERENTIA, inferentia)
        if inferentia
        else (AcceleratorKind.NONE, 0)
    )
    return catalog_type.model_copy(
        update={
            "vcpus": int(row["VCpuInfo"]["DefaultVCpus"]),
            "memory_gib": row["MemoryInfo"]["SizeInMiB"] / 1024.0,
            "accelerator": kind,
            "accelerator_count": count,
            "source": f"{catalog_type.source}; facts: EC2 DescribeInstanceTypes",
        }
    )


def latest_spot_prices(rows: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], float]:
    """The latest spot price per (type, zone) among DescribeSpotPriceHistory rows."""
    latest: dict[tuple[str, str], tuple[float, float]] = {}
    for row in rows:
        key = (row["InstanceType"], row["AvailabilityZone"])
        at_s = timestamp_s(row["Timestamp"])
        if key not in latest or at_s > latest[key][0]:
            latest[key] = (at_s, float(row["SpotPrice"]))
    return {key: price for key, (_, price) in latest.items()}


def pool_offerings(
    types: Iterable[InstanceType],
    zones: Sequence[str],
    offered: Mapping[str, frozenset[str]],
    spot_prices: Mapping[tuple[str, str], float],
) -> list[Offering]:
    """On-demand (catalog price) and spot (latest spot price) per type and configured zone.
    A pool is unavailable when the type is not offered in the zone, or, for spot, when the zone
    has no spot price (it is then listed at the on-demand price)."""
    out: list[Offering] = []
    for itype in types:
        on_demand_price = itype.on_demand_price_per_hour
        for zone in zones:
            in_zone = zone in offered.get(itype.name, frozenset())
            spot_price = spot_prices.get((itype.name, zone))
            out.append(
                Offering(
                    instance_type=itype.name,
                    zone=zone,
                    market=Market.ON_DEMAND,
                    price_per_hour=on_demand_price,
                    available=in_zone,
                    source=itype.source,
                )
            )
            out.append(
                Offering(
                    instance_type=itype.name,
                    zone=zone,
                    market=Market.SPOT,
                    price_per_hour=on_demand_price if spot_price is None else spot_price,
                    available=in_zone and spot_price is not None,
                    source=SPOT_SOURCE,
                )
            )
    return out
