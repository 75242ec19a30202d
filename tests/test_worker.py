"""The reference worker as a real subprocess: protocol, artifacts, server-side batching, pacing."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from mark.apps.worker.loaders import load_model
from mark.core.errors import InvalidValue
from mark.core.protocol import HEADER_LENGTH, parse_v2_response
from tests.dataplane import spawn_worker, stop_worker, workers

ROW = [0.25 * i for i in range(16)]


def _mlp_reference(rows: np.ndarray) -> np.ndarray:
    return load_model("m", "builtin:mlp").predict({"input": rows.astype(np.float32)})["output"]


def _infer_body(rows: list[list[float]]) -> dict[str, object]:
    return {"inputs": [{"name": "input", "shape": [len(rows), 16], "datatype": "FP32",
                        "data": rows}]}  # fmt: skip


async def test_v2_endpoints_and_outputs() -> None:
    async with workers(["--model", "demo=builtin:mlp"]) as [w], aiohttp.ClientSession() as s:
        async with s.get(f"{w.endpoint}/v2/health/ready") as r:
            assert r.status == 200
        async with s.get(f"{w.endpoint}/v2") as r:
            assert "binary_tensor_data" in (await r.json())["extensions"]
        async with s.get(f"{w.endpoint}/v2/models/demo") as r:
            meta = await r.json()
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}]
        async with s.post(f"{w.endpoint}/v2/models/demo/infer", json=_infer_body([ROW])) as r:
            doc = await r.json()
        out = np.array(doc["outputs"][0]["data"], dtype=np.float32).reshape(1, 4)
        np.testing.assert_allclose(out, _mlp_reference(np.array([ROW])), rtol=1e-5)
        async with s.post(f"{w.endpoint}/v1/models/demo:predict", json={"instances": [ROW]}) as r:
            preds = (await r.json())["predictions"]
        np.testing.assert_allclose(preds, out, rtol=1e-5)
        body = _infer_body([ROW, ROW])
        body["parameters"] = {"binary_data_output": True}
        async with s.post(f"{w.endpoint}/v2/models/demo/infer", json=body) as r:
            raw = await r.read()
            binary = parse_v2_response(raw, int(r.headers[HEADER_LENGTH]))
        assert binary.outputs[0].shape == (2, 4)
        for path, payload, status in [
            ("/v2/models/nope/infer", _infer_body([ROW]), 404),
            ("/v2/models/demo/infer", _infer_body([ROW[:15]]), 400),
            ("/v2/models/demo/infer", {"inputs": "x"}, 400),
        ]:
            async with s.post(f"{w.endpoint}{path}", json=payload) as r:
                assert r.status == status
                assert "error" in await r.json()


async def test_concurrent_requests_execute_as_batches() -> None:
    # Paced to the catalog's c5.large demo profile (T(b) = 4 + b ms), so requests that arrive
    # while a batch runs queue up and leave together.
    args = ["--model", "demo=builtin:mlp", "--instance-type", "c5.large"]
    async with workers(args) as [w], aiohttp.ClientSession() as s:
        rng = np.random.default_rng(4)
        rows = rng.normal(size=(40, 16)).round(3)

        async def one(i: int) -> np.ndarray:
            url = f"{w.endpoint}/v2/models/demo/infer"
            async with s.post(url, json=_infer_body([rows[i].tolist()])) as r:
                doc = await r.json()
            return np.array(doc["outputs"][0]["data"]).reshape(1, 4)

        outs = await asyncio.gather(*(one(i) for i in range(40)))
        np.testing.assert_allclose(np.vstack(outs), _mlp_reference(rows), rtol=1e-4, atol=1e-5)
        async with s.get(f"{w.endpoint}/v2/models/demo/stats") as r:
            stats = await r.json()
        assert stats["requests"] == 40
        assert stats["batches"] < 40
        assert max(int(k) for k in stats["batch_rows"]) > 1


async def test_onnx_and_sklearn_artifacts(tmp_path: Path) -> None:
    import joblib
    import onnx
    from onnx import TensorProto, helper
    from sklearn.linear_model import LogisticRegression

    weights = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor("w", TensorProto.FLOAT, [3, 4], weights.reshape(-1).tolist())],
    )
    onnx_path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), onnx_path)
    rng = np.random.default_rng(7)
    x = rng.normal(size=(60, 5))
    clf = LogisticRegression().fit(x, (x[:, 0] > 0).astype(np.int64))
    joblib.dump(clf, tmp_path / "clf.joblib")
    args = ["--model", f"onnx:{onnx_path}", "--model", f"clf=sklearn:{tmp_path / 'clf.joblib'}"]
    async with workers(args) as [w], aiohttp.ClientSession() as s:
        body = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32",
                            "data": [1, 2, 3, 4, 5, 6]}]}  # fmt: skip
        async with s.post(f"{w.endpoint}/v2/models/tiny/infer", json=body) as r:
            doc = await r.json()
        got = np.array(doc["outputs"][0]["data"]).reshape(2, 4)
        want = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32) @ weights
        np.testing.assert_allclose(got, want, rtol=1e-5)
        # FP64: the estimator's datatype, as it was fitted on float64
        body = {"inputs": [{"name": "input", "shape": [4, 5], "datatype": "FP64",
                            "data": x[:4].tolist()}]}  # fmt: skip
        async with s.post(f"{w.endpoint}/v2/models/clf/infer", json=body) as r:
            doc = await r.json()
        outputs = {o["name"]: o for o in doc["outputs"]}
        assert outputs["output"]["datatype"] == "INT64"
        assert outputs["output"]["data"] == clf.predict(x[:4]).tolist()
        assert outputs["probabilities"]["shape"] == [4, 2]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--model", "builtin:mlp", "--instance-type", "no.such"], "unknown instance type"),
        (["--model", "torchscript:/nonexistent.pt"], "does not exist"),
        (["--model", "weird:thing"], "unknown artifact kind"),
        (["--model", "demo=builtin:mlp", "--instance-type", "p2.xlarge"], "no profile"),
        ([], "give --model, --store"),
        (["--store", "/nonexistent/store"], "does not exist"),
        (["--store", "s3:///x"], "names no bucket"),
        (["--model", "builtin:mlp", "--memory-budget-bytes", "100"], "whole budget"),
    ],
)
def test_refuses_with_a_clear_error(args: list[str], fragment: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mark.apps.cli", "worker", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert fragment in done.stderr


def test_torchscript_needs_torch(tmp_path: Path) -> None:
    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed: the missing-torch error cannot be shown")
    artifact = tmp_path / "m.pt"
    artifact.write_bytes(b"\0")
    with pytest.raises(InvalidValue, match="need torch"):
        load_model("m", f"torchscript:{artifact}")


async def test_profiles_flag_paces_a_registered_model() -> None:
    profile = {"instance_type": "local.gpu", "latency_ms": {"1": 30.0, "8": 37.0}, "max_batch": 8}
    w = await spawn_worker(
        "--model", "m=builtin:mlp", "--instance-type", "c5.large",
        "--profiles", json.dumps({"m": profile}),
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{w.endpoint}/v2/models/m/infer", json=_infer_body([ROW])) as r:
                assert r.status == 200
    finally:
        await stop_worker(w)
