"""Ec2Cloud (provisioner/adapters/ec2/) driven with boto3 through moto's server on loopback.

Errors AWS returns are injected at the wire: a botocore `before-send` hook answers the chosen
action with the XML body EC2 sends, so boto3's own parsing, retry and error path run on it.
"""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from mark.core.catalog import load_catalog
from mark.core.config import CloudConfig
from mark.core.errors import CloudError, InsufficientCapacity, PermissionDenied
from mark.core.types import BackendSpec, InstanceState, Market, Model, Offering, Slo
from provisioner.adapters.cloud import MODELS_TAG, OWNER_TAG, CloudProvider
from provisioner.adapters.ec2 import Ec2Cloud
from provisioner.adapters.retry import RetryingCloud
from provisioner.policy.reconcile import ReconcileKind, reconcile
from tests.aws import ec2_error_xml, inject, spot_requests_xml

TYPES = ("c5.large", "c5.xlarge", "m5.large")
ZONES = ("us-east-1a", "us-east-1b")


class Clock:
    def __init__(self, now_s: float) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def make_cloud(moto_url: str, image_id: str) -> Iterator[Callable[..., Ec2Cloud]]:
    """A provider with its own owner tag, so tests sharing the emulator never see each other's
    instances."""
    catalog = load_catalog().instance_types
    clouds: list[Ec2Cloud] = []
    owner = f"test-{uuid.uuid4().hex[:8]}"

    def make(**overrides: Any) -> Ec2Cloud:
        settings: dict[str, Any] = {
            "provider": "ec2",
            "endpoint_url": moto_url,
            "zones": ZONES,
            "image_id": image_id,
            "owner": owner,
            "api_max_attempts": 1,
            "poll_interval_s": 0.05,
            **overrides,
        }
        clock = Clock(datetime.now(UTC).timestamp())
        cloud = Ec2Cloud(
            CloudConfig(**settings),
            models=registered,
            catalog_types=[catalog[t] for t in TYPES],
            clock=clock,
        )
        clouds.append(cloud)
        return cloud

    yield make
    for cloud in clouds:
        cloud.client.close()


async def registered(name: str) -> Model:
    return Model(
        name=name,
        slo=Slo(latency_ms=500, percentile=0.98),
        backend=BackendSpec(artifact=f"onnx:/models/{name} v1.onnx"),
        max_batch=8,
    )


def offering(cloud_offers: list[Offering], itype: str, zone: str, market: Market) -> Offering:
    return next(
        o for o in cloud_offers if (o.instance_type, o.zone, o.market) == (itype, zone, market)
    )


def test_conforms_to_the_cloud_provider_protocol(make_cloud: Callable[..., Ec2Cloud]) -> None:
    assert isinstance(make_cloud(), CloudProvider)


async def test_offerings_take_spot_prices_and_type_facts_from_ec2(
    make_cloud: Callable[..., Ec2Cloud],
) -> None:
    cloud = make_cloud()
    types = {t.name: t for t in await cloud.instance_types()}
    assert set(types) == set(TYPES)
    assert types["c5.xlarge"].vcpus == 4 and types["c5.xlarge"].memory_gib == 8.0
    assert "DescribeInstanceTypes" in types["c5.large"].source
    offers = await cloud.offerings()
    assert len(offers) == len(TYPES) * len(ZONES) * 2
    spot = offering(offers, "c5.large", "us-east-1b", Market.SPOT)
    on_demand = offering(offers, "c5.large", "us-east-1b", Market.ON_DEMAND)
    assert spot.available and spot.source == "EC2 DescribeSpotPriceHistory"
    assert spot.price_per_hour < on_demand.price_per_hour
    catalog_type = load_catalog().instance_types["c5.large"]
    assert on_demand.price_per_hour == catalog_type.on_demand_price_per_hour


async def test_launch_on_demand_and_spot_with_tags_and_find_them(
    make_cloud: Callable[..., Ec2Cloud],
    outside: Any,
) -> None:
    cloud = make_cloud()
    offers = await cloud.offerings()
    od = await cloud.launch(offering(offers, "c5.large", "us-east-1a", Market.ON_DEMAND), ["m1"])
    sp = await cloud.launch(offering(offers, "m5.large", "us-east-1b", Market.SPOT), ["m1", "m2"])
    assert od.state == InstanceState.PENDING and od.endpoint and od.endpoint.endswith(":8080")
    assert sp.offering.market == Market.SPOT and sp.models == ("m1", "m2")
    rows = {
        row["InstanceId"]: row
        for r in outside.describe_instances(InstanceIds=[od.id, sp.id])["Reservations"]
        for row in r["Instances"]
    }
    assert rows[sp.id]["InstanceLifecycle"] == "spot"
    assert "InstanceLifecycle" not in rows[od.id]
    assert rows[sp.id]["Placement"]["AvailabilityZone"] == "us-east-1b"
    user_data = outside.describe_instance_attribute(InstanceId=sp.id, Attribute="userData")
    script = base64.b64decode(user_data["UserData"]["Value"]).decode()
    assert script.startswith("#!/bin/bash\n")
    assert "exec mark worker --host 0.0.0.0 --allow-remote --port 8080 --max-batch 8" in script
    assert "--model 'm2=onnx:/models/m2 v1.onnx'" in script
    tags = {t["Key"]: t["Value"] for t in rows[sp.id]["Tags"]}
    assert tags[OWNER_TAG] == cloud.config.owner and tags[MODELS_TAG] == "m1,m2"
    listed = {i.id: i for i in await make_cloud().list()}  # a fresh process finds both
    assert set(listed) == {od.id, sp.id}
    assert listed[sp.id].offering.market == Market.SPOT
    assert listed[sp.id].models == ("m1", "m2")
    assert listed[od.id].state == InstanceState.RUNNING


async def test_refused_spot_raises_insufficient_capacity_and_on_demand_takes_over(
    make_cloud: Callable[..., Ec2Cloud],
) -> None:
    cloud = make_cloud()
    offers = await cloud.offerings()
    spot = offering(offers, "c5.large", "us-east-1a", Market.SPOT)
    inject(
        cloud,
        "RunInstances",
        ec2_error_xml(
            "InsufficientInstanceCapacity",
            "We currently do not have sufficient c5.large capacity in the Availability Zone you "
            "requested (us-east-1a).",
        ),
        status=500,
        times=10,
        when="InstanceMarketOptions",
    )
    with pytest.raises(InsufficientCapacity, match="InsufficientInstanceCapacity"):
        await cloud.launch(spot, ["m1"])
    assert await cloud.list() == []
    # The provider keeps no memory of the refusal: avoiding the pool is the planner's state.
    refreshed = await cloud.offerings()
    assert offering(refreshed, "c5.large", "us-east-1a", Market.SPOT) == spot
    fallback = offering(refreshed, "c5.large", "us-east-1a", Market.ON_DEMAND)
    instance = await cloud.launch(fallback, ["m1"])
    assert instance.offering.market == Market.ON_DEMAND
    assert [i.id for i in await cloud.list()] == [instance.id]


async def test_spot_max_price_too_low_is_a_capacity_error(
    make_cloud: Callable[..., Ec2Cloud],
) -> None:
    cloud = make_cloud()
    spot = offering(await cloud.offerings(), "m5.large", "us-east-1b", Market.SPOT)
    inject(
        cloud,
        "RunInstances",
        ec2_error_xml(
            "SpotMaxPriceTooLow",
            "Your Spot request price of 0.01 is lower than the minimum "
            "required Spot request fulfillment price of 0.0312.",
        ),
    )
    with pytest.raises(InsufficientCapacity):
        await cloud.launch(spot, ["m1"])


async def test_throttling_is_retried_by_botocore_at_the_wire(
    make_cloud: Callable[..., Ec2Cloud],
) -> None:
    cloud = make_cloud(api_max_attempts=3)
    answered = inject(
        cloud,
        "RunInstances",
        ec2_error_xml("RequestLimitExceeded", "Request limit exceeded."),
        status=503,
        times=2,
    )
    od = offering(await cloud.offerings(), "c5.large", "us-east-1a", Market.ON_DEMAND)
    instance = await cloud.launch(od, ["m1"])
    assert answered == ["RunInstances", "RunInstances"]
    assert [i.id for i in await cloud.list()] == [instance.id]


async def test_throttling_beyond_botocores_attempts_is_a_transient_cloud_error(
    make_cloud: Callable[..., Ec2Cloud],
) -> None:
    cloud = make_cloud(api_max_attempts=2)
    answered = inject(
        cloud,
        "TerminateInstances",
        ec2_error_xml("RequestLimitExceeded", "slow down"),
        status=503,
        times=5,
    )
    with pytest.raises(CloudError, match="throttled") as raised:
        await cloud.terminate("i-0123456789abcdef0")
    assert raised.value.transient
    assert answered == ["TerminateInstances"] * 2


async def test_retrying_cloud_retries_what_outlived_botocore_and_not_capacity(
    make_cloud: Callable[..., Ec2Cloud],
) -> None:
    """The control plane's provider (RetryingCloud over Ec2Cloud): a throttled launch is tried
    again after botocore gave up; a refused one is raised at once, for the caller to re-plan."""
    delays_s: list[float] = []

    async def no_wait(delay_s: float) -> None:
        delays_s.append(delay_s)

    ec2 = make_cloud()
    cloud = RetryingCloud(ec2, retries=3, sleep=no_wait)
    offers = await cloud.offerings()
    throttled = inject(
        ec2,
        "RunInstances",
        ec2_error_xml("RequestLimitExceeded", "Request limit exceeded."),
        status=503,
        times=2,
    )
    od = offering(offers, "c5.large", "us-east-1a", Market.ON_DEMAND)
    instance = await cloud.launch(od, ["m1"])
    assert throttled == ["RunInstances"] * 2 and len(delays_s) == 2
    assert [i.id for i in await cloud.list()] == [instance.id]
    refused = inject(
        ec2,
        "RunInstances",
        ec2_error_xml("InsufficientInstanceCapacity", "no capacity"),
        status=500,
        times=5,
    )
    with pytest.raises(InsufficientCapacity):
        await cloud.launch(offering(offers, "c5.large", "us-east-1b", Market.SPOT), ["m1"])
    assert refused == ["RunInstances"] and len(delays_s) == 2


async def test_unauthorized_names_the_iam_policy(make_cloud: Callable[..., Ec2Cloud]) -> None:
    cloud = make_cloud()
    od = offering(await cloud.offerings(), "c5.large", "us-east-1a", Market.ON_DEMAND)
    inject(
        cloud,
        "RunInstances",
        ec2_error_xml("UnauthorizedOperation", "You are not authorized to perform this operation."),
        status=403,
    )
    with pytest.raises(PermissionDenied, match="deploy/iam") as raised:
        await cloud.launch(od, ["m1"])
    assert not raised.value.transient


async def test_describe_instance_types_denied_falls_back_to_the_catalog(
    make_cloud: Callable[..., Ec2Cloud],
) -> None:
    cloud = make_cloud()
    inject(
        cloud,
        "DescribeInstanceTypes",
        ec2_error_xml("UnauthorizedOperation", "You are not authorized to perform this operation."),
        status=403,
    )
    types = {t.name: t for t in await cloud.instance_types()}
    assert types["c5.large"] == load_catalog().instance_types["c5.large"]


async def test_terminate_and_terminate_again_and_unknown_all_succeed(
    make_cloud: Callable[..., Ec2Cloud],
    outside: Any,
) -> None:
    cloud = make_cloud()
    od = offering(await cloud.offerings(), "c5.large", "us-east-1a", Market.ON_DEMAND)
    instance = await cloud.launch(od, ["m1"])
    await cloud.terminate(instance.id)
    await cloud.terminate(instance.id)
    await cloud.terminate("i-0123456789abcdef0")
    assert await cloud.list() == []
    state = outside.describe_instances(InstanceIds=[instance.id])["Reservations"][0]
    assert state["Instances"][0]["State"]["Name"] in {"shutting-down", "terminated"}


async def test_external_termination_is_an_interruption_and_gets_replaced(
    make_cloud: Callable[..., Ec2Cloud],
    outside: Any,
) -> None:
    cloud = make_cloud()
    offers = await cloud.offerings()
    pool = offering(offers, "c5.large", "us-east-1a", Market.SPOT)
    victim = await cloud.launch(pool, ["m1"])
    keeper = await cloud.launch(offering(offers, "c5.large", "us-east-1b", Market.SPOT), ["m1"])
    assert await cloud.poll_interruptions() == []
    outside.terminate_instances(InstanceIds=[victim.id])  # AWS reclaims the spot instance
    stream = cloud.interruptions()
    notice = await anext(stream)
    await stream.aclose()
    assert notice.instance_id == victim.id and notice.reason
    assert await cloud.poll_interruptions() == []  # reported once
    replacement = await cloud.launch(
        offering(offers, "m5.large", "us-east-1b", Market.SPOT), victim.models
    )
    assert {i.id for i in await cloud.list()} == {keeper.id, replacement.id}


async def test_spot_marked_for_termination_gives_a_two_minute_notice(
    make_cloud: Callable[..., Ec2Cloud],
) -> None:
    cloud = make_cloud()
    instance = await cloud.launch(
        offering(await cloud.offerings(), "c5.large", "us-east-1a", Market.SPOT), ["m1"]
    )
    marked_at = datetime.now(UTC).replace(microsecond=0)
    body = spot_requests_xml(instance.id, "marked-for-termination", update_time=marked_at)
    inject(cloud, "DescribeSpotInstanceRequests", body, status=200)
    (notice,) = await cloud.poll_interruptions()
    assert notice.instance_id == instance.id
    assert notice.reason == "marked-for-termination"
    assert notice.terminate_at_s - notice.at_s == 120.0
    assert notice.at_s == marked_at.timestamp()


async def test_scale_in_terminates_only_the_chosen_instance(
    make_cloud: Callable[..., Ec2Cloud],
) -> None:
    cloud = make_cloud()
    offers = await cloud.offerings()
    first, second = [
        await cloud.launch(offering(offers, "c5.large", zone, Market.SPOT), ["m1"])
        for zone in ZONES
    ]
    await cloud.terminate(second.id)
    assert [i.id for i in await cloud.list()] == [first.id]
    assert await cloud.poll_interruptions() == []  # Mark's own termination is no interruption


async def test_after_a_crash_reconcile_leaves_no_untracked_instance(
    make_cloud: Callable[..., Ec2Cloud],
    outside: Any,
) -> None:
    """The control plane launched three instances and crashed before recording the last one,
    and one recorded instance was reclaimed while it was down. A fresh process reconciles."""
    before = make_cloud()
    offers = await before.offerings()
    launched = [
        await before.launch(offering(offers, t, "us-east-1a", Market.SPOT), ["m1"]) for t in TYPES
    ]
    recorded, lost = launched[:2], launched[2]
    outside.terminate_instances(InstanceIds=[recorded[1].id])
    after = make_cloud()
    grace_s = 300.0
    now_s = max(i.launched_at_s for i in launched) + grace_s + 1
    actions = reconcile(recorded, await after.list(), now_s, grace_s)
    kinds = {a.instance.id: a.kind for a in actions}
    assert kinds[lost.id] == ReconcileKind.TERMINATE_UNTRACKED
    assert kinds[recorded[1].id] == ReconcileKind.MARK_VANISHED
    for action in actions:
        if action.kind == ReconcileKind.TERMINATE_UNTRACKED:
            await after.terminate(action.instance.id)
    adopted = {a.instance.id for a in actions if a.kind == ReconcileKind.ADOPT}
    assert adopted == {recorded[0].id}
    assert {i.id for i in await after.list()} == adopted


async def test_dry_run_logs_calls_and_buys_nothing(
    make_cloud: Callable[..., Ec2Cloud],
    outside: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cloud = make_cloud(dry_run=True)
    od = offering(await cloud.offerings(), "c5.large", "us-east-1a", Market.SPOT)
    with caplog.at_level(logging.INFO, logger="mark.ec2"):
        instance = await cloud.launch(od, ["m1"])
        assert [i.id for i in await cloud.list()] == [instance.id]
        await cloud.terminate(instance.id)
    assert instance.id.startswith("dryrun-")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "dry-run: run_instances" in logged and "'MarketType': 'spot'" in logged
    assert await cloud.list() == []
    owner = cloud.config.owner
    reservations = outside.describe_instances(
        Filters=[{"Name": f"tag:{OWNER_TAG}", "Values": [owner]}]
    )["Reservations"]
    assert reservations == []


async def test_a_denied_dry_run_is_a_permission_error(make_cloud: Callable[..., Ec2Cloud]) -> None:
    """AWS checks a dry run's permissions: a missing one fails as it would for real."""
    cloud = make_cloud(dry_run=True)
    od = offering(await cloud.offerings(), "c5.large", "us-east-1a", Market.ON_DEMAND)
    inject(
        cloud,
        "RunInstances",
        ec2_error_xml("UnauthorizedOperation", "You are not authorized to perform this operation."),
        status=403,
    )
    with pytest.raises(PermissionDenied, match="run_instances"):
        await cloud.launch(od, ["m1"])
    assert await cloud.list() == []


async def test_describe_calls_follow_every_page(make_cloud: Callable[..., Ec2Cloud]) -> None:
    """boto3's paginator follows NextToken: a notice on the second page is not lost."""
    cloud = make_cloud()
    offers = await cloud.offerings()
    first, second = [
        await cloud.launch(offering(offers, "c5.large", zone, Market.SPOT), ["m1"])
        for zone in ZONES
    ]
    first_page = inject(
        cloud,
        "DescribeSpotInstanceRequests",
        spot_requests_xml(first.id, "marked-for-termination", next_token="page-2"),
        status=200,
    )
    second_page = inject(
        cloud,
        "DescribeSpotInstanceRequests",
        spot_requests_xml(second.id, "marked-for-stop"),
        status=200,
        when="NextToken=page-2",
    )
    notices = {n.instance_id: n.reason for n in await cloud.poll_interruptions()}
    assert first_page == second_page == ["DescribeSpotInstanceRequests"]
    assert notices == {first.id: "marked-for-termination", second.id: "marked-for-stop"}
