"""The local cloud notices a worker that dies on its own (issue 18, item 2): the instance turns
terminated in its own list and a notice with no warning left is yielded, as EC2 reports an
instance already gone; a worker of the state file that died while no provider watched (the
control plane was down) is reported so when the next provider starts. An instance the provider
stops itself is no news."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from mark.core.config import CloudConfig
from mark.core.errors import NotFound
from mark.core.types import Model
from provisioner.adapters.cloud import InterruptionNotice
from provisioner.adapters.local_cloud import LocalCloud
from tests.dataplane import model, offering
from tests.test_local_cloud import run_provider_with_one_worker

CONFIG = CloudConfig(launch_overhead_scale=0.001, zones=("us-east-1a",))


async def _models(name: str) -> Model:
    if name != "demo":
        raise NotFound(f"unknown model {name!r}")
    return model("demo")


async def _next_notice(cloud: LocalCloud, timeout_s: float = 10.0) -> InterruptionNotice:
    notices = cloud.interruptions()
    try:
        return await asyncio.wait_for(anext(notices), timeout_s)
    finally:
        await notices.aclose()


async def test_a_killed_worker_is_reported_gone(tmp_path: Path) -> None:
    cloud = LocalCloud(CONFIG, models=_models, state_dir=tmp_path)
    try:
        inst = await cloud.wait_running((await cloud.launch(offering(), ["demo"])).id, 30)
        stopped = await cloud.wait_running((await cloud.launch(offering(), ["demo"])).id, 30)
        await cloud.terminate(stopped.id)  # stopped by the provider: no notice for it
        pid = cloud.pid(inst.id)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        notice = await _next_notice(cloud)
        assert notice.instance_id == inst.id
        assert notice.terminate_at_s == notice.at_s  # no warning left: it is gone
        assert "exited" in notice.reason
        assert await cloud.list() == []
    finally:
        await cloud.close()


async def test_a_worker_that_died_with_its_control_plane_is_reported_at_start(
    tmp_path: Path,
) -> None:
    """The provider's process is SIGKILLed (its worker dies with it: the parent-death signal);
    the next provider on the same state dir reports the instance gone."""
    parent, instance_id, _ = run_provider_with_one_worker(tmp_path)
    assert parent.stdout is not None
    try:
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
    finally:
        parent.stdout.close()
    second = LocalCloud(CONFIG, models=_models, state_dir=tmp_path)
    try:
        notice = await _next_notice(second)
        assert notice.instance_id == instance_id and notice.terminate_at_s == notice.at_s
        assert await second.list() == []
    finally:
        await second.close()
