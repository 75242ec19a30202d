"""The inference path end to end: a real front end (Sanic, the lead's create_app with the
inference blueprint) and an in-process Fleet, against real `mark worker` subprocesses."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from prometheus_client import REGISTRY

from frontend.fleet import Fleet
from mark.adapters.db import Database
from mark.apps.worker.loaders import load_model
from mark.core.config import BatchingConfig, load_config
from mark.core.protocol import InferRequest, Tensor
from tests.conftest import free_port
from tests.dataplane import (
    front_end,
    linear_profile,
    model,
    running,
    spawn_worker,
    stop_worker,
    wait_routable,
    workers,
)

MLP = load_model("reference", "builtin:mlp")


def _expected(rows: np.ndarray) -> np.ndarray:
    return MLP.predict({"input": rows.astype(np.float32)})["output"]


def _body(rows: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32",
                        "data": rows.reshape(-1).tolist()}]}  # fmt: skip


@dataclass
class Front:
    url: str
    fleet: Fleet
    db: Database


@pytest.fixture
async def front(tmp_path: Path) -> AsyncIterator[Front]:
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'mark.db'}"
    db = await Database.open(db_url)
    port = free_port()
    config = load_config(
        environ={},
        server={"port": port, "max_body_mb": 0.05},
        database={"url": db_url},
        batching={"sync_interval_s": 0.05},
    )
    async with workers(["--model", "demo=builtin:mlp"]) as [w]:
        await db.create_model(model("demo"))
        await db.create_model(model("cold", slo_ms=50.0))
        await db.save_instance(running("i-1", w.endpoint))
        async with front_end(config) as app:
            await wait_routable(app, "demo")
            try:
                yield Front(f"http://127.0.0.1:{port}", app.ctx.fleet, db)
            finally:
                await db.close()


async def test_v2_and_tf_serving_answers(front: Front) -> None:
    rows = np.random.default_rng(1).normal(size=(3, 16)).astype(np.float32)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{front.url}/v2") as r:
            assert (await r.json())["name"] == "mark"
        async with s.get(f"{front.url}/v2/models/demo") as r:
            meta = await r.json()
        assert meta["name"] == "demo" and meta["inputs"][0]["shape"] == [-1, 16]
        async with s.get(f"{front.url}/v2/models/demo/ready") as r:
            assert r.status == 200
        async with s.get(f"{front.url}/v2/models/cold/ready") as r:
            assert r.status == 400 and (await r.json())["ready"] is False
        async with s.post(f"{front.url}/v2/models/demo/infer", json=_body(rows)) as r:
            doc = await r.json()
        assert doc["model_name"] == "demo"
        out = np.array(doc["outputs"][0]["data"]).reshape(3, 4)
        np.testing.assert_allclose(out, _expected(rows), rtol=1e-4, atol=1e-5)
        tf = {"instances": rows.tolist()}
        async with s.post(f"{front.url}/v1/models/demo:predict", json=tf) as r:
            preds = (await r.json())["predictions"]
        np.testing.assert_allclose(preds, _expected(rows), rtol=1e-4, atol=1e-5)
        tf = {"inputs": {"input": rows.tolist()}}
        async with s.post(f"{front.url}/v1/models/demo:predict", json=tf) as r:
            outs = (await r.json())["outputs"]
        np.testing.assert_allclose(outs, _expected(rows), rtol=1e-4, atol=1e-5)
        async with s.get(f"{front.url}/metrics") as r:
            text = await r.text()
        assert 'mark_inference_requests_total{code="200",model="demo",path="instance"}' in text


async def test_tritonclient_http_works_unchanged(front: Front) -> None:
    import tritonclient.http as httpclient

    rows = np.random.default_rng(2).normal(size=(2, 16)).astype(np.float32)

    def call() -> np.ndarray:
        client = httpclient.InferenceServerClient(front.url.removeprefix("http://"))
        try:
            assert client.is_server_live() and client.is_model_ready("demo")
            given = httpclient.InferInput("input", [2, 16], "FP32")
            given.set_data_from_numpy(rows)  # binary tensor data, the client's default
            result = client.infer(
                "demo", [given], outputs=[httpclient.InferRequestedOutput("output")]
            )
            return np.asarray(result.as_numpy("output"))
        finally:
            client.close()

    out = await asyncio.to_thread(call)
    np.testing.assert_allclose(out, _expected(rows), rtol=1e-4, atol=1e-5)


async def test_caller_mistakes_get_documented_4xx(front: Front) -> None:
    good = _body(np.zeros((1, 16)))
    wrong_shape = _body(np.zeros((1, 15)))
    wrong_type = {"inputs": [{"name": "input", "shape": [1, 16], "datatype": "INT64",
                              "data": [0] * 16}]}  # fmt: skip
    cases: list[tuple[str, bytes, int]] = [
        ("/v2/models/nope/infer", json.dumps(good).encode(), 404),
        ("/v1/models/nope:predict", b'{"instances": [[1]]}', 404),
        ("/v2/models/demo/infer", b"{broken", 400),
        ("/v2/models/demo/infer", json.dumps(wrong_shape).encode(), 400),
        ("/v2/models/demo/infer", json.dumps(wrong_type).encode(), 400),
        ("/v1/models/demo:predict", b'{"instances": [[1, 2]]}', 400),
        ("/v1/models/demo:predict", b'{"nothing": 1}', 400),
        ("/v2/models/demo/infer", b"x" * 100_000, 413),
        ("/v2/models/cold/infer", json.dumps(good).encode(), 503),
    ]
    async with aiohttp.ClientSession() as s:
        for path, body, status in cases:
            async with s.post(f"{front.url}{path}", data=body) as r:
                assert r.status == status, (path, await r.text())
                assert (await r.json())["error"]


async def _fleet(
    instances: list[Any], models: list[Any], *, wait_admitted: bool = True, **batching: Any
) -> Fleet:
    fleet = Fleet(BatchingConfig(**batching))
    fleet.set_models(models)
    fleet.set_instances(instances)
    if wait_admitted:
        await fleet.admitted()
    return fleet


def _request(rows: np.ndarray) -> InferRequest:
    return InferRequest((Tensor.of("input", rows.astype(np.float32)),))


async def _stats(endpoint: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{endpoint}/v2/models/demo/stats") as r:
            doc: dict[str, Any] = await r.json()
            return doc


async def test_weighted_distribution_follows_capacity() -> None:
    fast = linear_profile("c5.2xlarge", 1.0, 0.2)
    slow = linear_profile("c5.large", 1.0, 0.8)
    demo = model("demo", profiles=[fast, slow], max_batch=1)
    async with workers(["--model", "demo=builtin:mlp"], ["--model", "demo=builtin:mlp"]) as ws:
        fleet = await _fleet(
            [running("fast", ws[0].endpoint, itype="c5.2xlarge"),
             running("slow", ws[1].endpoint, itype="c5.large")],
            [demo],
        )  # fmt: skip
        try:
            weights = fleet.weights("demo")
            assert weights["fast"] > weights["slow"]
            rows = np.zeros((1, 16))
            for _ in range(200):
                await fleet.infer("demo", _request(rows))
            counts = [(await _stats(w.endpoint))["requests"] for w in ws]
        finally:
            await fleet.close()
    share = weights["fast"] / (weights["fast"] + weights["slow"])
    assert counts[0] / 200 == pytest.approx(share, abs=0.02)


async def test_batching_forms_batches_within_the_slo() -> None:
    gpu = linear_profile("g4dn.xlarge", 20.0, 0.5, max_batch=32)
    demo = model("demo", slo_ms=400.0, profiles=[gpu], max_batch=32)
    args = ["--model", "demo=builtin:mlp", "--instance-type", "g4dn.xlarge", "--profiles",
            json.dumps({"demo": gpu.model_dump(mode="json")})]  # fmt: skip
    async with workers(args) as [w]:
        fleet = await _fleet([running("gpu", w.endpoint, itype="g4dn.xlarge")], [demo])
        rng = np.random.default_rng(3)
        rows = rng.normal(size=(300, 16))
        latencies: list[float] = []

        async def one(i: int) -> None:
            started = time.perf_counter()
            answer = await fleet.infer("demo", _request(rows[i : i + 1]))
            latencies.append(time.perf_counter() - started)
            np.testing.assert_allclose(
                answer.response.outputs[0].array, _expected(rows[i : i + 1]), rtol=1e-4, atol=1e-5
            )

        try:
            tasks = []
            for i in range(300):  # ~300 rps offered, open loop: one request alone takes 20.5 ms
                tasks.append(asyncio.create_task(one(i)))
                await asyncio.sleep(1 / 300)
            await asyncio.gather(*tasks)
            stats = await _stats(w.endpoint)
        finally:
            await fleet.close()
    assert (
        stats["requests"] == 300 or sum(int(k) * v for k, v in stats["batch_rows"].items()) == 300
    )
    assert stats["batches"] < 150 and max(int(k) for k in stats["batch_rows"]) > 1
    within = sum(lat <= demo.slo.latency_s for lat in latencies) / len(latencies)
    assert within >= demo.slo.percentile


async def test_killed_worker_loses_no_request() -> None:
    demo = model("demo", slo_ms=2000.0, profiles=[linear_profile("c5.large", 2.0, 0.5)])
    pace = ["--model", "demo=builtin:mlp", "--instance-type", "c5.large", "--profiles",
            json.dumps({"demo": demo.profiles["c5.large"].model_dump(mode="json")})]  # fmt: skip
    started = [await spawn_worker(*pace) for _ in range(3)]
    fleet = await _fleet(
        [running(f"i{k}", w.endpoint) for k, w in enumerate(started)], [demo], health_interval_s=0.2
    )
    rng = np.random.default_rng(5)
    rows = rng.normal(size=(600, 16))
    results: dict[int, np.ndarray] = {}

    async def one(i: int) -> None:
        answer = await fleet.infer("demo", _request(rows[i : i + 1]))
        assert i not in results
        results[i] = answer.response.outputs[0].array

    try:
        tasks = []
        for i in range(600):
            tasks.append(asyncio.create_task(one(i)))
            if i == 200:
                started[1].kill()
            await asyncio.sleep(0.002)
        await asyncio.gather(*tasks)  # any 503 or error would raise here
        assert "i1" not in fleet.routable("demo")
    finally:
        await fleet.close()
        for w in started:
            await stop_worker(w)
    assert sorted(results) == list(range(600))
    got = np.vstack([results[i] for i in range(600)])
    np.testing.assert_allclose(got, _expected(rows), rtol=1e-4, atol=1e-5)


async def test_a_new_instance_is_routed_to_once_its_worker_answers_and_not_before() -> None:
    """EC2 says `running` a while before the worker its user data starts listens: a request
    meanwhile waits for it (it does not fail, and the instance is not ejected, which would get
    it replaced before it booted), and is served as soon as its health check passes."""
    port = free_port()
    fleet = await _fleet(
        [running("booting", f"http://127.0.0.1:{port}")],
        [model("demo", slo_ms=30_000.0)],
        health_interval_s=0.1,
        wait_admitted=False,
    )
    try:
        pending = asyncio.create_task(fleet.infer("demo", _request(np.zeros((1, 16)))))
        await asyncio.sleep(1.0)
        assert not pending.done() and fleet.routable("demo") == []
        assert not REGISTRY.get_sample_value(
            "mark_instance_ejected", {"model": "demo", "instance": "booting"}
        )
        async with workers(["--model", "demo=builtin:mlp", "--port", str(port)]):
            answer = await asyncio.wait_for(pending, 30.0)
        assert answer.instance_id == "booting" and answer.path == "instance"
    finally:
        await fleet.close()


async def test_an_instance_whose_worker_never_answers_is_reported_after_the_boot_grace() -> None:
    port = free_port()  # nothing listens there
    fleet = await _fleet(
        [running("never", f"http://127.0.0.1:{port}")],
        [model("demo")],
        health_interval_s=0.1,
        boot_grace_s=0.5,
        wait_admitted=False,
    )
    labels = {"model": "demo", "instance": "never"}
    try:
        async with asyncio.timeout(30.0):  # a loaded machine: no timing is asserted here
            while not REGISTRY.get_sample_value("mark_instance_ejected", labels):
                await asyncio.sleep(0.05)
        assert fleet.routable("demo") == []
    finally:
        await fleet.close()
    assert REGISTRY.get_sample_value("mark_instance_ejected", labels) == 0.0  # gone with it
