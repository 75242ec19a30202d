"""A model whose only artifact is an S3 object (registered from an S3 store, `worker.store` =
s3://...) is served without an instance (issue 19, items 4 and 7): the front end answers its
metadata from the object and the serverless pool answers its spilled requests from it, both
through the model store's seam (`SpecObjects`). moto's S3 server on loopback, a real front end
(Sanic over loopback) and the real local function pool (spawned sandboxes running
deploy/lambda/handler.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import numpy as np
import pytest
from sanic import Sanic

from mark.adapters.db import Database
from mark.core.config import ServerlessConfig, load_config
from mark.core.protocol import InferRequest, Tensor
from provisioner.adapters.serverless import LocalFunctionPool
from provisioner.adapters.serverless.spill import infer
from tests.conftest import free_port
from tests.dataplane import front_end, model
from tests.model_artifacts import onnx_bytes, weights

TOKEN = "s3-only-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def bucket(moto_url: str) -> tuple[Any, str]:
    client: Any = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")
    name = f"models-{time.monotonic_ns()}"
    client.create_bucket(Bucket=name)
    return client, name


@pytest.fixture
async def front(tmp_path: Path, moto_url: str) -> AsyncIterator[tuple[str, Sanic]]:
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'mark.db'}"
    db = await Database.open(db_url)
    port = free_port()
    config = load_config(
        environ={},
        server={"port": port, "admin_token": TOKEN},
        database={"url": db_url},
        batching={"sync_interval_s": 0.05},
        spill={"enabled": False},
        worker={"store_endpoint_url": moto_url},
    )
    try:
        async with front_end(config) as app:
            yield f"http://127.0.0.1:{port}", app
    finally:
        await db.close()


async def _get(s: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with s.get(url) as r:
        return r.status, await r.json()


async def test_an_s3_only_model_answers_its_metadata_from_the_object(
    front: tuple[str, Sanic], bucket: tuple[Any, str]
) -> None:
    url, app = front
    client, name = bucket
    client.put_object(Bucket=name, Key="models/tiny.onnx", Body=onnx_bytes(0.5, 3, input_name="x"))
    async with aiohttp.ClientSession() as s:
        for m, key in (("tiny", "models/tiny.onnx"), ("gone", "models/gone.onnx")):
            spec = {"name": m, "slo": {"latency_ms": 5000, "percentile": 0.98},
                    "backend": {"protocol": "kserve-v2",
                                "artifact": f"onnx:s3://{name}/{key}"}}  # fmt: skip
            async with s.post(f"{url}/admin/v1/models", json=spec, headers=AUTH) as r:
                assert r.status == 201, await r.text()
        async with asyncio.timeout(10):
            while {"tiny", "gone"} - {m.name for m in app.ctx.fleet.models()}:
                await asyncio.sleep(0.02)
        status, doc = await _get(s, f"{url}/v2/models/tiny")
        assert status == 200, doc
        assert doc["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]
        assert doc["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 4]}]
        # A new version of the object (a new ETag) is read within a check (the sync interval)
        client.put_object(
            Bucket=name, Key="models/tiny.onnx", Body=onnx_bytes(0.5, 5, input_name="x")
        )
        async with asyncio.timeout(10):
            while doc["inputs"][0]["shape"] != [-1, 5]:
                await asyncio.sleep(0.05)
                status, doc = await _get(s, f"{url}/v2/models/tiny")
        status, doc = await _get(s, f"{url}/v2/models/gone")
        assert status == 503 and "artifact missing" in doc["error"], doc
        assert f"s3://{name}/models/gone.onnx" in doc["error"]


async def test_the_serverless_pool_answers_an_s3_only_model(
    bucket: tuple[Any, str], moto_url: str
) -> None:
    client, name = bucket
    client.put_object(Bucket=name, Key="models/tiny.onnx", Body=onnx_bytes(0.5, 3, input_name="x"))
    served = model("tiny", artifact=f"onnx:s3://{name}/models/tiny.onnx")
    pool = LocalFunctionPool(
        ServerlessConfig(concurrency=1), environment={"AWS_ENDPOINT_URL_S3": moto_url}
    )
    try:
        x = np.ones((2, 3), dtype=np.float32)
        response, invocation = await infer(pool, served, InferRequest((Tensor.of("x", x),)))
        assert invocation.result["cold_start"] is True
        np.testing.assert_allclose(response.outputs[0].array, x @ weights(0.5, 3), rtol=1e-5)
        _, again = await infer(pool, served, InferRequest((Tensor.of("x", x),)))
        assert again.result["cold_start"] is False  # the sandbox keeps what it fetched
    finally:
        await pool.close()
