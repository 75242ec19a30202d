"""The serverless pools (provisioner/adapters/serverless.py) end to end: boto3's Lambda client ->
the
Invoke API on loopback -> the local pool's spawned sandboxes running deploy/lambda/handler.py."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from botocore import UNSIGNED
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from mark.apps.worker.loaders import load_model
from mark.core.catalog import load_catalog
from mark.core.config import ServerlessConfig
from mark.core.protocol import InferRequest, Tensor
from mark.core.types import BackendSpec, Model, Slo
from provisioner.adapters.serverless import (
    FunctionError,
    InvokeServer,
    LambdaPool,
    LocalFunctionPool,
    PayloadTooLarge,
    ServerlessPool,
    Throttled,
    build_pool,
    infer,
    spill_event,
)

MODEL = Model(
    name="demo",
    slo=Slo(latency_ms=500, percentile=0.98),
    backend=BackendSpec(artifact="builtin:mlp"),
)
PRICING = load_catalog().lambda_pricing


def batch(rows: int, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, 16)).astype(np.float32)


def v2_request(x: np.ndarray) -> InferRequest:
    return InferRequest(inputs=(Tensor.of("input", x),), id="r1")


@pytest.fixture
async def local() -> AsyncIterator[tuple[LocalFunctionPool, str]]:
    pool = LocalFunctionPool(ServerlessConfig(concurrency=2, memory_mb=2048, timeout_s=60))
    server = InvokeServer(pool)
    url = await server.start()
    try:
        yield pool, url
    finally:
        await server.close()
        await pool.close()


def lambda_client(url: str) -> Any:
    return boto3.client(
        "lambda",
        endpoint_url=url,
        region_name="us-east-1",
        config=BotoConfig(signature_version=UNSIGNED, retries={"total_max_attempts": 1}),
    )


async def test_boto3_invoke_runs_the_handler_cold_then_warm(
    local: tuple[LocalFunctionPool, str],
) -> None:
    pool, url = local
    client = lambda_client(url)
    x = batch(3)
    event = spill_event(MODEL, v2_request(x))

    def call() -> dict[str, Any]:
        answer = client.invoke(FunctionName="mark-spill", Payload=json.dumps(event), LogType="Tail")
        answer["Body"] = json.loads(answer["Payload"].read())
        return answer

    first = await asyncio.to_thread(call)
    second = await asyncio.to_thread(call)
    assert first["StatusCode"] == 200 and "FunctionError" not in first
    expected = load_model("demo", "builtin:mlp").predict({"input": x})["output"]
    (output,) = first["Body"]["response"]["outputs"]
    assert output["name"] == "output" and output["shape"] == [3, 4]
    np.testing.assert_allclose(np.asarray(output["data"]).reshape(3, 4), expected, rtol=1e-6)
    assert first["Body"]["cold_start"] and not second["Body"]["cold_start"]
    first_log = base64.b64decode(first["LogResult"]).decode()
    second_log = base64.b64decode(second["LogResult"]).decode()
    assert "Init Duration" in first_log and "Init Duration" not in second_log
    assert "Memory Size: 2048 MB" in second_log
    client.close()
    assert pool.observed.invocations == 2 and pool.observed.cold_starts == 1
    profile = pool.profile("demo", default_warm_ms=999.0)
    assert profile.idle_warm == 1 and profile.free_slots == 2 and profile.warm_ms < 999.0


async def test_lambda_pool_answers_a_spilled_request_and_bills_it(
    local: tuple[LocalFunctionPool, str],
) -> None:
    _, url = local
    pool = build_pool(ServerlessConfig(provider="local"), local_endpoint_url=url)
    assert isinstance(pool, LambdaPool) and isinstance(pool, ServerlessPool)
    x = batch(2, seed=11)
    cold_response, cold = await infer(pool, MODEL, v2_request(x))
    response, warm = await infer(pool, MODEL, v2_request(x))
    await pool.close()
    expected = load_model("demo", "builtin:mlp").predict({"input": x})["output"]
    np.testing.assert_allclose(response.outputs[0].array, expected, rtol=1e-6)
    assert response.id == "r1" and cold_response.model_name == "demo"
    assert cold.cold_start and cold.init_ms > 0 and not warm.cold_start
    assert warm.billed_ms >= warm.duration_ms and warm.memory_mb == 2048
    assert warm.cost_usd == pytest.approx(PRICING.charge_usd(warm.billed_ms, 2048))
    assert warm.gb_seconds == pytest.approx(warm.billed_ms / 1000 * 2048 / 1024)
    assert pool.observed.spent_usd == pytest.approx(cold.cost_usd + warm.cost_usd)
    assert cold.cost_usd > warm.cost_usd  # the cold start's init is billed


async def test_lambda_pool_warms_sandboxes_with_concurrent_pings(
    local: tuple[LocalFunctionPool, str],
) -> None:
    """MArk's pre-warming through boto3: concurrent warm-only pings load the model in that many
    sandboxes behind the Invoke API (capped by the pool's concurrency), each billed."""
    backing, url = local
    pool = build_pool(ServerlessConfig(provider="local", concurrency=2), local_endpoint_url=url)
    pings = await pool.warm("demo", "builtin:mlp", count=5)
    await pool.close()
    assert len(pings) == 2  # capped by the pool's concurrency
    assert all(p.cost_usd > 0 and p.result.get("response") is None for p in pings)
    assert backing.profile("demo", default_warm_ms=999.0).idle_warm == 2


async def test_payload_over_six_megabytes_is_refused_with_413(
    local: tuple[LocalFunctionPool, str],
) -> None:
    pool, url = local
    big = {"model": "demo", "artifact": "builtin:mlp", "pad": "x" * (6 * 1024 * 1024)}
    with pytest.raises(PayloadTooLarge):
        await pool.invoke(big)
    client = lambda_client(url)
    with pytest.raises(ClientError) as raised:
        await asyncio.to_thread(
            client.invoke, FunctionName="mark-spill", Payload=json.dumps(big).encode()
        )
    assert raised.value.response["Error"]["Code"] == "RequestTooLargeException"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413
    client.close()
    assert pool.observed.invocations == 0


async def test_unknown_function_and_function_errors_come_back_as_lambda_does(
    local: tuple[LocalFunctionPool, str],
) -> None:
    _, url = local
    client = lambda_client(url)
    with pytest.raises(ClientError) as raised:
        await asyncio.to_thread(client.invoke, FunctionName="nope", Payload=b"{}")
    assert raised.value.response["Error"]["Code"] == "ResourceNotFoundException"
    client.close()
    pool = LambdaPool(ServerlessConfig(), endpoint_url=url, unsigned=True)
    with pytest.raises(FunctionError) as failed:  # the handler raises on an event without one
        await pool.invoke({"model": "demo", "request": {}})
    assert failed.value.error_type == "KeyError"
    # A request that does not fit the model is no failure of the function: it says why.
    refused = await pool.invoke({"model": "demo", "artifact": "builtin:mlp", "request": {}})
    assert refused.result["response"] is None
    assert refused.result["rejected"] == "'inputs' is required"
    await pool.close()


async def test_beyond_the_concurrency_limit_invocations_are_throttled() -> None:
    pool = LocalFunctionPool(ServerlessConfig(concurrency=1, timeout_s=60))
    server = InvokeServer(pool)
    url = await server.start()
    try:
        event = spill_event(MODEL, v2_request(batch(1)))
        first = asyncio.create_task(pool.invoke(event))
        await asyncio.sleep(0)  # the first holds the only sandbox while it starts
        assert pool.profile("demo", 100.0).free_slots == 0
        with pytest.raises(Throttled):
            await pool.invoke(event)
        # One attempt: botocore's standard mode would retry a 429 until the sandbox frees up.
        remote = LambdaPool(ServerlessConfig(api_max_attempts=1), endpoint_url=url, unsigned=True)
        with pytest.raises(Throttled):
            await remote.invoke(event)
        await remote.close()
        assert (await first).result["response"]["outputs"][0]["shape"] == [1, 4]
    finally:
        await server.close()
        await pool.close()


async def test_timeout_kills_the_sandbox_and_the_next_call_starts_cold(tmp_path: Path) -> None:
    handler = tmp_path / "handler.py"
    handler.write_text(
        "import time\n"
        "def handler(event, context):\n"
        "    time.sleep(event.get('sleep_s', 0))\n"
        "    return {'response': None, 'init_ms': 0.0, 'handler_ms': 1.0,"
        " 'max_memory_used_mb': 1.0}\n"
    )
    pool = LocalFunctionPool(
        ServerlessConfig(concurrency=1, timeout_s=0.5, handler_path=str(handler))
    )
    try:
        with pytest.raises(FunctionError, match="timed out"):
            await pool.invoke({"model": "m", "artifact": "a", "sleep_s": 30})
        again = await pool.invoke({"model": "m", "artifact": "a"})
        assert again.cold_start and again.init_ms > 0
    finally:
        await pool.close()
