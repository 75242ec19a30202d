"""What a RunInstances call carries besides the type and the zone: the launch template or the
AMI, the tags that make the instance Mark's, the spot options, and the user data that starts
`mark worker` with the instance's models.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Any

from mark.core.config import CloudConfig
from mark.core.types import Market, Model
from provisioner.adapters.cloud import MODELS_TAG, OWNER_TAG

__all__ = [
    "MARKET_TAG",
    "PRICE_TAG",
    "launch_tags",
    "spot_options",
    "template_or_image",
    "worker_user_data",
]

MARKET_TAG = "mark:market"
PRICE_TAG = "mark:price-per-hour"


def worker_user_data(command: str, models: Sequence[Model]) -> str:
    """A shell script that starts `command` (`mark worker ...`) with each model's artifact; the
    image or launch template provides the `mark` package. The batch cap is the largest of the
    models'. botocore base64-encodes RunInstances' UserData itself."""
    flags = [f"--max-batch {max((m.max_batch for m in models), default=1)}"]
    flags += [f"--model {shlex.quote(f'{m.name}={m.backend.artifact}')}" for m in models]
    return (
        "#!/bin/bash\n"
        "# Written by Mark (provisioner/adapters/ec2/launch.py): serve the models tagged on "
        "this instance.\n"
        f"exec {command} {' '.join(flags)}\n"
    )


def launch_tags(
    owner: str, models: Sequence[str], market: Market, price_per_hour: float
) -> list[dict[str, str]]:
    """The tags `list()` and reconciliation read back: the owner (whose fleet), the models, the
    market and the price paid (a spot instance is billed at its pool's price)."""
    tags = {
        OWNER_TAG: owner,
        MODELS_TAG: ",".join(models),
        MARKET_TAG: market.value,
        PRICE_TAG: f"{price_per_hour:.6f}",
        "Name": f"mark-{owner}",
    }
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def template_or_image(config: CloudConfig) -> dict[str, Any]:
    """The launch template (by id when it starts with `lt-`, else by name) or the AMI."""
    if config.launch_template:
        by_id = config.launch_template.startswith("lt-")
        key = "LaunchTemplateId" if by_id else "LaunchTemplateName"
        return {"LaunchTemplate": {key: config.launch_template, "Version": "$Latest"}}
    return {"ImageId": config.image_id}


def spot_options(max_price_per_hour: float) -> dict[str, Any]:
    """One-time spot, terminated on interruption, with a max price (the on-demand price, so a
    spot instance never costs more than its on-demand twin)."""
    return {
        "MarketType": "spot",
        "SpotOptions": {
            "MaxPrice": f"{max_price_per_hour:.6f}",
            "SpotInstanceType": "one-time",
            "InstanceInterruptionBehavior": "terminate",
        },
    }
