"""RetryingCloud (provisioner/adapters/retry.py), the one retry layer for cloud calls, around a
small in-test CloudProvider that fails the first calls with the errors it is given: the seam
itself, not a fake of AWS. (Its use over Ec2Cloud against moto is in test_ec2.py.)"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from mark.core.config import Config
from mark.core.errors import (
    CloudError,
    CloudNotFound,
    DryRunOperation,
    InsufficientCapacity,
    InvalidValue,
    PermissionDenied,
)
from mark.core.types import Instance, InstanceType, Market, Offering
from provisioner.adapters.cloud import CloudProvider, InterruptionNotice
from provisioner.adapters.retry import RetryingCloud

OFFER = Offering(instance_type="c5.large", zone="z1", market=Market.SPOT, price_per_hour=0.04)


class FlakyCloud:
    """Raises `failures` in order, one per call, then answers."""

    name = "flaky"

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.calls: list[str] = []
        self.closed = False

    def _answer(self, what: str) -> None:
        self.calls.append(what)
        if self.failures:
            raise self.failures.pop(0)

    async def instance_types(self) -> list[InstanceType]:
        self._answer("instance_types")
        return []

    async def offerings(self) -> list[Offering]:
        self._answer("offerings")
        return [OFFER]

    async def launch(self, offering: Offering, models: Sequence[str]) -> Instance:
        self._answer("launch")
        return Instance(id="i-1", offering=offering, models=tuple(models), launched_at_s=0.0)

    async def terminate(self, instance_id: str) -> None:
        self._answer(f"terminate {instance_id}")

    async def list(self) -> list[Instance]:
        self._answer("list")
        return []

    async def interruptions(self) -> AsyncIterator[InterruptionNotice]:
        yield InterruptionNotice("i-1", 0.0, 120.0, "marked-for-termination")

    async def close(self) -> None:
        self.closed = True


_: type[CloudProvider] = FlakyCloud


class Sleeps:
    """The delays RetryingCloud asked for, without waiting them."""

    def __init__(self) -> None:
        self.delays_s: list[float] = []

    async def __call__(self, delay_s: float) -> None:
        self.delays_s.append(delay_s)


def test_conforms_to_the_cloud_provider_protocol_and_keeps_the_name() -> None:
    cloud = RetryingCloud(FlakyCloud(), retries=1)
    assert isinstance(cloud, CloudProvider)
    assert cloud.name == "flaky"


async def test_transient_errors_are_retried_with_capped_jittered_backoff() -> None:
    inner = FlakyCloud(*(CloudError(f"throttled {n}") for n in range(4)))
    sleeps = Sleeps()
    cloud = RetryingCloud(inner, retries=4, base_delay_s=0.5, max_delay_s=1.5, sleep=sleeps)
    instance = await cloud.launch(OFFER, ["m1"])
    assert instance.models == ("m1",) and instance.offering == OFFER
    assert inner.calls == ["launch"] * 5
    caps_s = [0.5, 1.0, 1.5, 1.5]  # base * 2**attempt, capped at max_delay_s
    assert len(sleeps.delays_s) == 4
    assert all(0.0 <= d <= cap for d, cap in zip(sleeps.delays_s, caps_s, strict=True))


async def test_the_last_error_is_raised_after_the_retries() -> None:
    last = CloudError("still failing")
    inner = FlakyCloud(CloudError("first"), CloudError("second"), last)
    sleeps = Sleeps()
    cloud = RetryingCloud(inner, retries=2, sleep=sleeps)
    with pytest.raises(CloudError) as raised:
        await cloud.terminate("i-1")
    assert raised.value is last
    assert inner.calls == ["terminate i-1"] * 3 and len(sleeps.delays_s) == 2


async def test_no_retries_means_one_attempt() -> None:
    inner = FlakyCloud(CloudError("down"))
    sleeps = Sleeps()
    with pytest.raises(CloudError, match="down"):
        await RetryingCloud(inner, retries=0, sleep=sleeps).offerings()
    assert inner.calls == ["offerings"] and sleeps.delays_s == []


@pytest.mark.parametrize(
    "error",
    [
        InsufficientCapacity("no c5.large in z1"),
        CloudNotFound("InvalidAMIID.NotFound"),
        PermissionDenied("UnauthorizedOperation"),
        DryRunOperation("would have succeeded"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_errors_a_retry_cannot_mend_are_raised_at_once(error: CloudError) -> None:
    inner = FlakyCloud(error)
    sleeps = Sleeps()
    cloud = RetryingCloud(inner, retries=5, sleep=sleeps)
    with pytest.raises(type(error)) as raised:
        await cloud.launch(OFFER, ["m1"])
    assert raised.value is error and not error.transient
    assert inner.calls == ["launch"] and sleeps.delays_s == []


async def test_errors_that_are_not_the_clouds_pass_through_unretried() -> None:
    inner = FlakyCloud(KeyError("m1"))
    sleeps = Sleeps()
    with pytest.raises(KeyError):
        await RetryingCloud(inner, retries=3, sleep=sleeps).list()
    assert inner.calls == ["list"] and sleeps.delays_s == []


async def test_every_verb_is_retried_and_the_stream_and_close_pass_through() -> None:
    inner = FlakyCloud()
    cloud = RetryingCloud(inner, retries=1, sleep=Sleeps())
    for call, answer in [
        (cloud.instance_types, []),
        (cloud.offerings, [OFFER]),
        (cloud.list, []),
        (lambda: cloud.terminate("i-2"), None),
    ]:
        inner.failures = [CloudError("once")]
        assert await call() == answer
    assert inner.calls == [
        "instance_types",
        "instance_types",
        "offerings",
        "offerings",
        "list",
        "list",
        "terminate i-2",
        "terminate i-2",
    ]
    notice = await anext(cloud.interruptions())
    assert notice.instance_id == "i-1"
    await cloud.close()
    assert inner.closed


def test_negative_retries_are_refused() -> None:
    with pytest.raises(InvalidValue, match="retries"):
        RetryingCloud(FlakyCloud(), retries=-1)


async def test_the_control_planes_cloud_is_behind_the_retry_layer(tmp_path: Path) -> None:
    from mark.adapters.db import Database
    from mark.apps.control.plane import build_cloud

    config = Config.model_validate(
        {"cloud": {"local_state_dir": str(tmp_path / "cloud")}, "control": {"apply_retries": 2}}
    )
    db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'mark.db'}")
    cloud = build_cloud(config, db)
    try:
        assert isinstance(cloud, RetryingCloud)
        assert cloud.retries == 2 and cloud.name == "local"
    finally:
        await cloud.close()
        await db.close()
