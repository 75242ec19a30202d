"""Inference through a real `mark serve` subprocess (tests/conftest.py's `serve_factory`): the
README's curl against `--demo`, and a burst spilled by the HTTP workers to the control plane's
local serverless pool through its Lambda Invoke API (boto3), billed in `/admin/v1/costs` and
counted in `/metrics`."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from mark.apps.worker.loaders import load_model
from tests.conftest import Served

# The body of the README's curl (section "Quick start").
README_BODY = {
    "inputs": [
        {
            "name": "input",
            "shape": [1, 16],
            "datatype": "FP32",
            "data": [
                0.1,
                0.2,
                0.3,
                0.4,
                0.5,
                0.6,
                0.7,
                0.8,
                0.9,
                1.0,
                1.1,
                1.2,
                1.3,
                1.4,
                1.5,
                1.6,
            ],
        }
    ]
}
MLP = load_model("reference", "builtin:mlp")


def _expected(rows: np.ndarray) -> np.ndarray:
    return MLP.predict({"input": rows.astype(np.float32)})["output"]


def _db_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'mark.db'}"


async def _wait_running(s: aiohttp.ClientSession, served: Served, model: str) -> None:
    async with asyncio.timeout(60):
        while True:
            url = f"{served.base_url}/admin/v1/instances?model={model}"
            async with s.get(url, headers=served.auth) as r:
                doc = await r.json()
            if any(i["state"] == "running" for i in doc["instances"]):
                return
            await asyncio.sleep(0.2)


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        match = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            return float(match.group(2))
    return 0.0


async def test_demo_answers_the_readme_curl(serve_factory: Any, tmp_path: Path) -> None:
    served: Served = serve_factory(_db_url(tmp_path), extra_args=("--demo",))
    rows = np.asarray(README_BODY["inputs"][0]["data"], dtype=np.float32).reshape(1, 16)
    async with aiohttp.ClientSession() as s:
        await _wait_running(s, served, "demo")
        await asyncio.sleep(1.0)  # the HTTP workers poll the database every 0.5 s
        async with s.post(f"{served.base_url}/v2/models/demo/infer", json=README_BODY) as r:
            assert r.status == 200, await r.text()
            doc = await r.json()
        async with s.get(f"{served.base_url}/metrics") as r:
            text = await r.text()
    (out,) = doc["outputs"]
    assert doc["model_name"] == "demo" and out["shape"] == [1, 4]
    np.testing.assert_allclose(np.reshape(out["data"], (1, 4)), _expected(rows), rtol=1e-5)
    assert _metric(text, "mark_inference_requests_total", model="demo", code="200") >= 1


SPILL_CONFIG = """
[control]
enabled = false          # no autoscaling: the model stays without instances (a cold fleet)
[serverless]
provider = "local"
concurrency = 3
memory_mb = 1024
[spill]
ledger_flush_s = 0.2
"""


async def test_a_burst_spills_to_the_local_pool_and_is_billed(
    serve_factory: Any, tmp_path: Path
) -> None:
    served: Served = serve_factory(
        _db_url(tmp_path), extra_args=("--workers", "2"), config_text=SPILL_CONFIG
    )
    slo_ms = 20_000.0  # generous: the pool's sandboxes start cold in this burst
    model = {"name": "burst", "slo": {"latency_ms": slo_ms, "percentile": 0.98},
             "backend": {"protocol": "kserve-v2", "artifact": "builtin:mlp"}}  # fmt: skip
    rows = np.random.default_rng(21).normal(size=(24, 16)).astype(np.float32)
    async with aiohttp.ClientSession() as s:
        async with s.post(
            f"{served.base_url}/admin/v1/models", json=model, headers=served.auth
        ) as r:
            assert r.status == 201, await r.text()
        await asyncio.sleep(1.0)  # both HTTP workers see the model

        async def one(i: int) -> tuple[int, dict[str, Any], float]:
            body = {"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32",
                                "data": rows[i].tolist()}]}  # fmt: skip
            started = time.perf_counter()
            async with s.post(f"{served.base_url}/v2/models/burst/infer", json=body) as r:
                return r.status, await r.json(), time.perf_counter() - started

        results = await asyncio.gather(*(one(i) for i in range(24)))
        for _ in range(50):  # the ledger is written in batches
            async with s.get(f"{served.base_url}/admin/v1/costs", headers=served.auth) as r:
                costs = await r.json()
            if costs["serverless_requests"] >= 24:
                break
            await asyncio.sleep(0.2)
        for _ in range(50):  # each HTTP worker writes its answers' metrics every 0.25 s
            async with s.get(f"{served.base_url}/metrics") as r:
                text = await r.text()
            answered = _metric(text, "mark_inference_requests_total", path="serverless")
            if answered >= 24:
                break
            await asyncio.sleep(0.2)
    for i, (status, doc, latency_s) in enumerate(results):
        assert status == 200, (doc, served.log()[-4000:])
        assert latency_s <= slo_ms / 1000.0
        out = np.reshape(doc["outputs"][0]["data"], (1, 4))
        np.testing.assert_allclose(out, _expected(rows[i : i + 1]), rtol=1e-4, atol=1e-5)
    assert costs["serverless_requests"] == 24 and costs["serverless_usd"] > 0
    assert costs["per_model_usd"]["burst"] == costs["serverless_usd"]
    spills = _metric(text, "mark_spill_total", model="burst", reason="cold-fleet")
    assert spills == 24
    assert _metric(text, "mark_inference_requests_total", model="burst", path="serverless") == 24
    assert _metric(text, "mark_spill_cost_usd_total", model="burst") > 0
