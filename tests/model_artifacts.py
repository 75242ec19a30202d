"""Small ONNX artifacts for the many-model worker tests, and readers of the worker's answers."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

FEATURES = 256  # weights of 256 x 4 FP32: an artifact of about 4.2 kB


def weights(scale: float, features: int = FEATURES) -> np.ndarray:
    return (np.arange(features * 4, dtype=np.float32).reshape(features, 4) % 7 - 3) * scale


def onnx_bytes(scale: float, features: int = FEATURES, *, input_name: str = "input") -> bytes:
    """y = x @ W, x [batch, features], W = weights(scale): a version shows in its answers."""
    from onnx import TensorProto, helper

    w = weights(scale, features)
    graph = helper.make_graph(
        [helper.make_node("MatMul", [input_name, "w"], ["output"])],
        "linear",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor("w", TensorProto.FLOAT, list(w.shape), w.reshape(-1).tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def write_model(store: Path, name: str, scale: float, features: int = FEATURES) -> Path:
    """An artifact in a local store, replaced by a rename as a careful writer does."""
    path = store / f"{name}.onnx"
    tmp = store / f".{name}.tmp"
    tmp.write_bytes(onnx_bytes(scale, features))
    tmp.replace(path)
    return path


def row(features: int = FEATURES) -> list[float]:
    return [((i % 5) - 2) / 4 for i in range(features)]


def body(features: int = FEATURES) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "shape": [1, features], "datatype": "FP32",
                        "data": [row(features)]}]}  # fmt: skip


def expected(scale: float, features: int = FEATURES) -> np.ndarray:
    return np.asarray([row(features)], dtype=np.float32) @ weights(scale, features)


async def infer(
    s: aiohttp.ClientSession, endpoint: str, model: str
) -> tuple[int, dict[str, Any], Mapping[str, str]]:
    async with s.post(f"{endpoint}/v2/models/{model}/infer", json=body()) as r:
        return r.status, await r.json(), r.headers


async def samples(s: aiohttp.ClientSession, endpoint: str) -> dict[tuple[str, str], float]:
    """The worker's /metrics as {(sample name, sorted labels): value}."""
    async with s.get(f"{endpoint}/metrics") as r:
        text = await r.text()
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[(sample.name, labels)] = sample.value
    return out


async def index(s: aiohttp.ClientSession, endpoint: str, **request: Any) -> dict[str, Any]:
    async with s.post(f"{endpoint}/v2/repository/index", json=request) as r:
        assert r.status == 200
        return {item["name"]: item for item in await r.json()}
