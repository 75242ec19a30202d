"""Metadata without an instance (issue 19, item 7): a model registered through the admin API and
run by no instance answers `GET /v2/models/{m}` with its artifact's real inputs and outputs,
read by the front end with the worker's own reader; TF Serving rows feed a single input of any
name; an sklearn input has the estimator's datatype. A real front end (Sanic, create_app) over
loopback, real `mark worker` subprocesses once an instance runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from sanic import Sanic

from mark.adapters.artifacts import read_signature
from mark.adapters.db import Database
from mark.core.config import load_config
from mark.core.protocol import TensorMeta
from tests.conftest import free_port
from tests.dataplane import front_end, running, wait_routable, workers
from tests.model_artifacts import onnx_bytes, weights

TOKEN = "artifact-metadata-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Front:
    url: str
    app: Sanic
    db: Database

    async def register(self, s: aiohttp.ClientSession, name: str, artifact: str) -> None:
        """POST the model to the admin API and wait until the fleet serves its name."""
        model = {"name": name, "slo": {"latency_ms": 5000, "percentile": 0.98},
                 "backend": {"protocol": "kserve-v2", "artifact": artifact}}  # fmt: skip
        async with s.post(f"{self.url}/admin/v1/models", json=model, headers=AUTH) as r:
            assert r.status == 201, await r.text()
        async with asyncio.timeout(10):
            while name not in {m.name for m in self.app.ctx.fleet.models()}:
                await asyncio.sleep(0.02)

    async def start_instance(self, instance_id: str, endpoint: str, model: str) -> None:
        await self.db.save_instance(running(instance_id, endpoint, (model,)))
        await wait_routable(self.app, model)


@pytest.fixture
async def front(tmp_path: Path) -> AsyncIterator[Front]:
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'mark.db'}"
    db = await Database.open(db_url)
    port = free_port()
    config = load_config(
        environ={},
        server={"port": port, "admin_token": TOKEN},
        database={"url": db_url},
        batching={"sync_interval_s": 0.05},
        spill={"enabled": False},
    )
    try:
        async with front_end(config) as app:
            yield Front(f"http://127.0.0.1:{port}", app, db)
    finally:
        await db.close()


async def _get(s: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with s.get(url) as r:
        return r.status, await r.json()


def _meta(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape}


async def test_an_onnx_model_with_no_instance_answers_its_real_metadata(
    front: Front, tmp_path: Path
) -> None:
    import tritonclient.http as httpclient

    (tmp_path / "tiny.onnx").write_bytes(onnx_bytes(0.5, 3, input_name="x"))
    (tmp_path / "corrupt.onnx").write_bytes(b"not an onnx graph")
    async with aiohttp.ClientSession() as s:
        await front.register(s, "tiny", f"onnx:{tmp_path / 'tiny.onnx'}")
        await front.register(s, "demo", "builtin:mlp")
        await front.register(s, "gone", f"onnx:{tmp_path / 'nowhere.onnx'}")
        await front.register(s, "corrupt", f"onnx:{tmp_path / 'corrupt.onnx'}")
        assert not front.app.ctx.fleet.routable("tiny")  # no instance runs it
        for path in ("/v2/models/tiny", "/v2/models/tiny/versions/1"):
            status, doc = await _get(s, front.url + path)
            assert status == 200, doc
            assert doc == {
                "name": "tiny",
                "versions": ["1"],
                "platform": "onnxruntime_onnx",
                "inputs": [_meta("x", "FP32", [-1, 3])],
                "outputs": [_meta("output", "FP32", [-1, 4])],
            }
        # A new version of the artifact (renamed over it, as a careful writer does) is read
        # again: the cache holds one entry per artifact version.
        (tmp_path / "next.onnx").write_bytes(onnx_bytes(0.5, 5, input_name="x"))
        (tmp_path / "next.onnx").replace(tmp_path / "tiny.onnx")
        async with asyncio.timeout(10):
            while doc["inputs"] != [_meta("x", "FP32", [-1, 5])]:
                await asyncio.sleep(0.05)
                status, doc = await _get(s, f"{front.url}/v2/models/tiny")
        status, doc = await _get(s, f"{front.url}/v2/models/demo")
        assert status == 200 and doc["inputs"] == [_meta("input", "FP32", [-1, 16])]
        assert doc["outputs"] == [_meta("output", "FP32", [-1, 4])]
        status, doc = await _get(s, f"{front.url}/v2/models/gone")
        assert status == 503 and "artifact missing" in doc["error"], doc
        assert "nowhere.onnx does not exist" in doc["error"]
        status, doc = await _get(s, f"{front.url}/v2/models/corrupt")
        assert status == 503 and "artifact unreadable" in doc["error"], doc

    def triton_metadata() -> Any:
        client = httpclient.InferenceServerClient(front.url.removeprefix("http://"))
        try:
            return client.get_model_metadata("tiny")
        finally:
            client.close()

    got = await asyncio.to_thread(triton_metadata)
    assert got["inputs"] == [_meta("x", "FP32", [-1, 5])]  # the second version


async def test_tf_serving_rows_feed_a_single_input_named_x(front: Front, tmp_path: Path) -> None:
    from onnx import TensorProto, helper, save

    artifact = tmp_path / "tiny.onnx"
    artifact.write_bytes(onnx_bytes(0.5, 3, input_name="x"))
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"])],
        "pair",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 2]) for n in "ab"],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 2])],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "p.onnx")
    rows = [[1.0, 2.0, 3.0], [-1.0, 0.5, 0.25]]
    want = np.asarray(rows, dtype=np.float32) @ weights(0.5, 3)
    async with aiohttp.ClientSession() as s:
        await front.register(s, "tiny", f"onnx:{artifact}")
        await front.register(s, "pair", f"onnx:{tmp_path / 'p.onnx'}")
        # No instance yet: the front end checks the rows against the artifact's `x` at once.
        bad = {"instances": [[1.0, 2.0]]}
        async with s.post(f"{front.url}/v1/models/tiny:predict", json=bad) as r:
            doc = await r.json()
        assert r.status == 400 and "input 'x' must have shape [-1, 3]" in doc["error"], doc
        async with s.post(f"{front.url}/v1/models/pair:predict", json=bad) as r:
            doc = await r.json()
        assert r.status == 400, doc
        assert "2 inputs ('a', 'b'): each row of 'instances' must be an object" in doc["error"]
        # Asked while the model has no instance, answered once one runs it.
        cold = asyncio.create_task(
            s.post(f"{front.url}/v1/models/tiny:predict", json={"instances": rows})
        )
        async with workers(["--model", f"tiny=onnx:{artifact}"]) as [w]:
            await front.start_instance("i-1", w.endpoint, "tiny")
            async with await cold as r:
                assert r.status == 200, await r.text()
                np.testing.assert_allclose((await r.json())["predictions"], want, rtol=1e-5)
            pairs = {"instances": [{"a": [1.0, 2.0], "b": [3.0, 4.0]}]}
            async with s.post(f"{front.url}/v1/models/tiny:predict", json=pairs) as r:
                assert r.status == 400  # tiny takes x alone


async def test_an_iris_classifier_takes_fp64_as_its_estimator_does(
    front: Front, tmp_path: Path
) -> None:
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    clf = LogisticRegression(max_iter=500).fit(x, y)
    joblib.dump(clf, tmp_path / "iris.joblib")
    rows = x[[0, 60, 120]]
    async with aiohttp.ClientSession() as s:
        await front.register(s, "iris", f"sklearn:{tmp_path / 'iris.joblib'}")
        status, doc = await _get(s, f"{front.url}/v2/models/iris")
        assert status == 200, doc
        assert doc["platform"] == "scikit_learn"
        assert doc["inputs"] == [_meta("input", "FP64", [-1, 4])]
        assert doc["outputs"] == [
            _meta("output", "INT64", [-1]),
            _meta("probabilities", "FP32", [-1, 3]),
        ]
        body = {"inputs": [{"name": "input", "shape": [3, 4], "datatype": "FP64",
                            "data": rows.reshape(-1).tolist()}]}  # fmt: skip
        async with workers(["--model", f"iris=sklearn:{tmp_path / 'iris.joblib'}"]) as [w]:
            await front.start_instance("i-1", w.endpoint, "iris")
            async with s.post(f"{front.url}/v2/models/iris/infer", json=body) as r:
                assert r.status == 200, await r.text()
                outputs = {o["name"]: o for o in (await r.json())["outputs"]}
            async with s.post(
                f"{front.url}/v1/models/iris:predict", json={"instances": rows.tolist()}
            ) as r:
                assert r.status == 200, await r.text()
                predictions = (await r.json())["predictions"]
    assert outputs["output"]["data"] == clf.predict(rows).tolist()
    assert [p["output"] for p in predictions] == clf.predict(rows).tolist()


def test_an_estimator_fitted_in_float32_takes_fp32(tmp_path: Path) -> None:
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_iris(return_X_y=True)
    fitted = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    joblib.dump(fitted.fit(x.astype(np.float32), y), tmp_path / "f32.joblib")
    signature = read_signature(f"sklearn:{tmp_path / 'f32.joblib'}")
    assert signature.inputs == (TensorMeta("input", "FP32", (-1, 4)),)
