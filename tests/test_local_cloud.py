"""LocalCloud: real `mark worker` processes behind the CloudProvider interface."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import aiohttp
import boto3
import numpy as np
import pytest

from mark.core.config import CloudConfig, WorkerConfig
from mark.core.errors import NotFound
from mark.core.types import InstanceState, Market, Model
from provisioner.adapters.cloud import MODELS_TAG, OWNER_TAG, CloudProvider
from provisioner.adapters.local_cloud import LocalCloud
from tests.dataplane import linear_profile, model, offering
from tests.model_artifacts import expected, index, infer, onnx_bytes, samples, write_model

CONFIG = CloudConfig(launch_overhead_scale=0.001, zones=("us-east-1a",))


async def _models(name: str) -> Model:
    if name != "demo":
        raise NotFound(f"unknown model {name!r}")
    return model("demo")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


async def test_launch_serve_bill_terminate(tmp_path: Path) -> None:
    cloud = LocalCloud(CONFIG, models=_models, state_dir=tmp_path)
    assert isinstance(cloud, CloudProvider)
    offers = await cloud.offerings()
    assert {o.market for o in offers} == {Market.ON_DEMAND, Market.SPOT}
    try:
        pending = await cloud.launch(offering("c5.large"), ["demo"])
        assert pending.state == InstanceState.PENDING
        assert pending.tags[OWNER_TAG] == "mark" and pending.tags[MODELS_TAG] == "demo"
        inst = await cloud.wait_running(pending.id, 30)
        assert inst.endpoint and inst.endpoint.startswith("http://127.0.0.1:")
        assert [i.id for i in await cloud.list()] == [inst.id]
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{inst.endpoint}/v2/models/demo") as r:
                assert r.status == 200
        pid = cloud.pid(inst.id)
        assert pid is not None and _alive(pid)
        await cloud.terminate(inst.id)
        await cloud.terminate(inst.id)  # already gone is success
        await cloud.terminate("local-unknown")
        assert await cloud.list() == []
        assert not _alive(pid)
    finally:
        await cloud.close()


async def test_spot_interruption_notice_then_kill(tmp_path: Path) -> None:
    cloud = LocalCloud(CONFIG, models=_models, state_dir=tmp_path)
    try:
        inst = await cloud.wait_running((await cloud.launch(offering(), ["demo"])).id, 30)
        notices = cloud.interruptions()
        cloud.interrupt(inst.id, notice_s=0.2)
        notice = await asyncio.wait_for(anext(notices), 5)
        assert notice.instance_id == inst.id
        assert notice.terminate_at_s == pytest.approx(notice.at_s + 0.2)
        for _ in range(100):
            if not await cloud.list():
                break
            await asyncio.sleep(0.05)
        assert await cloud.list() == []
        pid = cloud.pid(inst.id)
        assert pid is not None and not _alive(pid)
        with pytest.raises(NotFound):
            cloud.interrupt(inst.id)
    finally:
        await cloud.close()


async def test_failed_boot_terminates_and_unknown_model_raises(tmp_path: Path) -> None:
    from mark.core.errors import CloudError, CloudNotFound

    async def broken(name: str) -> Model:
        return model(name, artifact="onnx:/nonexistent.onnx")

    cloud = LocalCloud(CONFIG, models=broken, state_dir=tmp_path)
    try:
        inst = await cloud.launch(offering(), ["demo"])
        with pytest.raises(CloudError, match="terminated"):
            await cloud.wait_running(inst.id, 30)
        assert await cloud.list() == []
    finally:
        await cloud.close()
    cloud = LocalCloud(CONFIG, models=_models, state_dir=tmp_path)
    with pytest.raises(CloudNotFound, match="nope") as raised:
        await cloud.launch(offering(), ["nope"])
    assert not raised.value.transient  # RetryingCloud does not retry it


async def test_workers_get_the_worker_section_and_serve_file_and_s3_artifacts(
    tmp_path: Path, moto_url: str
) -> None:
    """The `[worker]` section reaches the workers the local cloud starts (their cache reports
    its budget, protection and polling), and a model whose artifact is an S3 object (as a bulk
    registration from an S3 store writes it) is served by them as a local file's is: loaded on
    demand in a fleet with a memory budget (it declares its footprint), at start without one.
    An object gone is the model's 503, not the worker's failure. Each is served under the name
    the front end calls it by."""
    client = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")
    bucket = f"models-{time.monotonic_ns()}"
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="models/fromS3.onnx", Body=onnx_bytes(2.0))
    local = write_model(tmp_path, "local", 1.0)
    pace = [linear_profile("c5.large", 1.0, 0.1)]
    registered = {  # each declares its footprint: in a fleet with a budget, loaded on demand
        "s3m": model("s3m", artifact=f"onnx:s3://{bucket}/models/fromS3.onnx", profiles=pace),
        "filem": model("filem", artifact=f"onnx:{local}", profiles=pace,
                       backend_model_name="served-name"),
        "gone": model("gone", artifact=f"onnx:s3://{bucket}/models/gone.onnx", profiles=pace),
    }  # fmt: skip
    registered = {n: m.model_copy(update={"memory_mb": 0.01}) for n, m in registered.items()}

    async def lookup(name: str) -> Model:
        return registered[name]

    budget = local.stat().st_size * 4
    lazy = WorkerConfig(
        store_endpoint_url=moto_url, memory_budget_bytes=budget, protect_s=7.0, poll_s=0.0
    )
    cloud = LocalCloud(CONFIG, models=lookup, worker=lazy, state_dir=tmp_path / "lazy")
    try:
        inst = await cloud.wait_running(
            (await cloud.launch(offering(), ["s3m", "filem", "gone"])).id, 30
        )
        assert inst.endpoint is not None
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{inst.endpoint}/v2") as r:
                cache = (await r.json())["cache"]
            assert (cache["memory_budget_bytes"], cache["protect_s"]) == (budget, 7.0)
            assert cache["poll_s"] == 0 and cache["models"] == []  # nothing loaded at start
            idx = await index(s, inst.endpoint)
            assert {n: i["state"] for n, i in idx.items()} == dict.fromkeys(
                ("s3m", "served-name", "gone"), "UNAVAILABLE"
            )
            for name, scale in (("s3m", 2.0), ("served-name", 1.0)):
                status, doc, _ = await infer(s, inst.endpoint, name)
                assert status == 200, doc
                np.testing.assert_allclose(doc["outputs"][0]["data"], expected(scale)[0])
            status, doc, headers = await infer(s, inst.endpoint, "gone")
            assert status == 503 and "artifact missing" in doc["error"], doc
            assert int(headers["Retry-After"]) >= 1
            m = await samples(s, inst.endpoint)
            assert m[("mark_worker_model_loads_total", "model=s3m,source=store")] == 1
            assert m[("mark_worker_model_loads_total", "model=served-name,source=file")] == 1
            assert (await infer(s, inst.endpoint, "s3m"))[0] == 200  # still up
    finally:
        await cloud.close()

    eager = WorkerConfig(store_endpoint_url=moto_url)
    cloud = LocalCloud(CONFIG, models=lookup, worker=eager, state_dir=tmp_path / "eager")
    try:
        inst = await cloud.wait_running((await cloud.launch(offering(), ["s3m"])).id, 30)
        assert inst.endpoint is not None
        async with aiohttp.ClientSession() as s:
            assert (await index(s, inst.endpoint))["s3m"]["state"] == "READY"  # at start
            status, doc, _ = await infer(s, inst.endpoint, "s3m")
            assert status == 200
            np.testing.assert_allclose(doc["outputs"][0]["data"], expected(2.0)[0])
    finally:
        await cloud.close()


async def test_restart_adopts_and_close_kills(tmp_path: Path) -> None:
    first = LocalCloud(CONFIG, models=_models, state_dir=tmp_path)
    inst = await first.wait_running((await first.launch(offering(), ["demo"])).id, 30)
    second = LocalCloud(CONFIG, models=_models, state_dir=tmp_path)
    assert [i.id for i in await second.list()] == [inst.id]
    pid = second.pid(inst.id)
    assert pid is not None
    await second.close()
    assert not _alive(pid)
    await first.close()


async def test_restart_reports_a_launch_cut_short_gone(tmp_path: Path) -> None:
    """A launch still waiting out its overhead when its provider dies has no worker to adopt:
    the restarted provider reports it gone at once, so the loop replaces it instead of
    counting it as capacity until reconciliation's grace runs out."""
    slow = CloudConfig(launch_overhead_scale=1.0, zones=("us-east-1a",))
    first = LocalCloud(slow, models=_models, state_dir=tmp_path)
    try:
        inst = await first.launch(offering(), ["demo"])
        second = LocalCloud(slow, models=_models, state_dir=tmp_path)
        assert await second.list() == []
        notice = await asyncio.wait_for(anext(aiter(second.interruptions())), 5.0)
        assert notice.instance_id == inst.id
        assert notice.terminate_at_s == notice.at_s  # no warning left: already gone
        await second.close()
    finally:
        await first.close()


def run_provider_with_one_worker(state_dir: Path) -> tuple[subprocess.Popen[str], str, int]:
    """A local-cloud provider in a child process of its own, with one running worker: the
    process, the instance id and the worker's pid (read from its first line). The caller kills
    the process (a control plane SIGKILLed) and must close its stdout."""
    script = textwrap.dedent(
        f"""
        import asyncio
        from mark.core.config import CloudConfig
        from provisioner.adapters.local_cloud import LocalCloud
        from tests.dataplane import model, offering

        async def models(name):
            return model(name)

        async def main():
            cloud = LocalCloud(CloudConfig(launch_overhead_scale=0), models=models,
                               state_dir={str(state_dir)!r})
            inst = await cloud.launch(offering(), ["demo"])
            await cloud.wait_running(inst.id, 30)
            print(inst.id, cloud.pid(inst.id), flush=True)
            await asyncio.sleep(60)

        asyncio.run(main())
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    instance_id, pid = parent.stdout.readline().split()
    return parent, instance_id, int(pid)


def test_no_worker_outlives_a_killed_control_plane(tmp_path: Path) -> None:
    parent, _, worker_pid = run_provider_with_one_worker(tmp_path)
    assert parent.stdout is not None
    try:
        assert _alive(worker_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _alive(worker_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(worker_pid)
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
