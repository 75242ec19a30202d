"""EC2 instance rows read back as Mark's `Instance`, and the states and spot status codes that
tell an instance's end before or as it happens (EC2 User Guide, "Spot request status").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from mark.core.types import Instance, InstanceState, Market, Offering
from provisioner.adapters.cloud import MODELS_TAG
from provisioner.adapters.ec2.launch import PRICE_TAG
from provisioner.adapters.ec2.offerings import timestamp_s

__all__ = [
    "SPOT_INTERRUPTION_CODES",
    "GONE_STATES",
    "LIVE_STATES",
    "TAGS_SOURCE",
    "instance_from_row",
]

# Spot request status codes that announce the instance's end; the instance state still reads
# `running` when they appear.
SPOT_INTERRUPTION_CODES = frozenset(
    {
        "marked-for-termination",
        "marked-for-stop",
        "marked-for-hibernation",
        "instance-terminated-by-price",
        "instance-terminated-no-capacity",
        "instance-terminated-capacity-oversubscribed",
        "instance-terminated-launch-group-constraint",
        "instance-stopped-by-price",
        "instance-stopped-no-capacity",
    }
)
GONE_STATES = frozenset({"shutting-down", "terminated", "stopping", "stopped"})
LIVE_STATES = ("pending", "running")
TAGS_SOURCE = "EC2 instance tags"


def instance_from_row(
    row: Mapping[str, Any],
    *,
    worker_port: int,
    on_demand_price: Callable[[str], float],
    offering: Offering | None = None,
) -> Instance:
    """An Instance from a DescribeInstances/RunInstances row and its Mark tags. Without the
    `offering` it was launched for (an adopted instance), the offering is rebuilt from the row,
    priced by the price tag, else at the type's `on_demand_price(type)`."""
    tags = {t["Key"]: t["Value"] for t in row.get("Tags", [])}
    if offering is None:
        market = Market.SPOT if row.get("InstanceLifecycle") == "spot" else Market.ON_DEMAND
        price = tags.get(PRICE_TAG)
        offering = Offering(
            instance_type=row["InstanceType"],
            zone=row["Placement"]["AvailabilityZone"],
            market=market,
            price_per_hour=float(price) if price else on_demand_price(row["InstanceType"]),
            source=TAGS_SOURCE,
        )
    ip = row.get("PrivateIpAddress")
    state = InstanceState.RUNNING if row["State"]["Name"] == "running" else InstanceState.PENDING
    launched_at_s = timestamp_s(row["LaunchTime"])
    return Instance(
        id=row["InstanceId"],
        offering=offering,
        models=tuple(m for m in tags.get(MODELS_TAG, "").split(",") if m),
        state=state,
        endpoint=f"http://{ip}:{worker_port}" if ip else None,
        tags=tags,
        launched_at_s=launched_at_s,
        running_at_s=launched_at_s if state == InstanceState.RUNNING else None,
    )
