"""The many-model worker as real processes on loopback: loads on demand within a memory budget,
eviction protection, one load per cold model, live reload from S3 (moto's server), bad input."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import numpy as np
import pytest

from mark.core.protocol import NO_ROOM, REFUSED_HEADER
from tests.dataplane import workers
from tests.model_artifacts import expected, index, infer, onnx_bytes, samples, write_model

LOADS = "mark_worker_model_loads_total"
EVICTIONS = "mark_worker_model_evictions_total"


def _loads(m: dict[tuple[str, str], float], model: str, source: str = "store") -> float:
    return m.get((LOADS, f"model={model},source={source}"), 0.0)


def _evictions(m: dict[tuple[str, str], float], model: str, reason: str = "lru") -> float:
    return m.get((EVICTIONS, f"model={model},reason={reason},tier=memory"), 0.0)


async def test_budget_evicts_the_least_recent_unprotected_model_and_loads_once(
    tmp_path: Path,
) -> None:
    size = max(write_model(tmp_path, name, scale).stat().st_size
               for name, scale in (("m1", 1.0), ("m2", 2.0), ("m3", 3.0)))  # fmt: skip
    protect_s = 2.0
    args = ["--store", str(tmp_path), "--memory-budget-bytes", str(int(size * 2.5)),
            "--protect-s", str(protect_s), "--poll-s", "0"]  # fmt: skip
    async with workers(args) as [w], aiohttp.ClientSession() as s:
        # 16 concurrent first requests to a cold model: all answered by one load
        answers = await asyncio.gather(*(infer(s, w.endpoint, "m1") for _ in range(16)))
        assert [a[0] for a in answers] == [200] * 16
        np.testing.assert_allclose(answers[0][1]["outputs"][0]["data"], expected(1.0)[0])
        assert _loads(await samples(s, w.endpoint), "m1") == 1
        assert (await infer(s, w.endpoint, "m2"))[0] == 200

        # both in active rotation: the third model is refused rather than one of them evicted
        await asyncio.gather(infer(s, w.endpoint, "m1"), infer(s, w.endpoint, "m2"))
        status, doc, headers = await infer(s, w.endpoint, "m3")
        assert status == 503 and "active rotation" in doc["error"]
        assert 1 <= int(headers["Retry-After"]) <= protect_s
        assert headers[REFUSED_HEADER] == NO_ROOM  # a matter of time, not a failed load
        idx = await index(s, w.endpoint)
        assert [idx[m]["state"] for m in ("m1", "m2", "m3")] == ["READY", "READY", "UNAVAILABLE"]

        # m2 keeps serving, m1 goes idle: once m1's protection lapses, m3 loads in its place
        refused = 0
        async with asyncio.timeout(30):
            while True:
                assert (await infer(s, w.endpoint, "m2"))[0] == 200
                status, doc, _ = await infer(s, w.endpoint, "m3")
                if status == 200:
                    break
                assert status == 503
                refused += 1
                await asyncio.sleep(0.2)
        np.testing.assert_allclose(doc["outputs"][0]["data"], expected(3.0)[0])
        idx = await index(s, w.endpoint)
        assert idx["m1"]["state"] == "UNAVAILABLE" and "evicted" in idx["m1"]["reason"]
        assert idx["m2"]["state"] == idx["m3"]["state"] == "READY"
        m = await samples(s, w.endpoint)
        assert _evictions(m, "m1") == 1 and _evictions(m, "m2") == _evictions(m, "m3") == 0
        assert m[("mark_worker_memory_used_bytes", "")] <= size * 2.5

        # after all go idle, m1 comes back from the disk tier (no second download)
        await asyncio.sleep(protect_s + 0.2)
        assert (await infer(s, w.endpoint, "m1"))[0] == 200
        m = await samples(s, w.endpoint)
        assert (_loads(m, "m1"), _loads(m, "m1", "disk")) == (1, 1)
        assert _evictions(m, "m2") + _evictions(m, "m3") == 1
        print(f"\nrefused m3 {refused + 1} times before m1's protection lapsed; loads "
              f"{sum(v for (n, _), v in m.items() if n == LOADS):.0f}, memory evictions "
              f"{sum(v for (n, _), v in m.items() if n == EVICTIONS):.0f}")  # fmt: skip


@pytest.fixture
def s3_store(moto_url: str) -> tuple[Any, str]:
    client = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")
    bucket = f"models-{time.monotonic_ns()}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


async def test_s3_artifact_changed_under_load_serves_the_new_version_without_a_failure(
    s3_store: tuple[Any, str], moto_url: str
) -> None:
    client, bucket = s3_store
    client.put_object(Bucket=bucket, Key="models/m.onnx", Body=onnx_bytes(1.0))
    poll_s = 0.5
    args = ["--store", f"s3://{bucket}/models", "--store-endpoint-url", moto_url,
            "--poll-s", str(poll_s)]  # fmt: skip
    async with workers(args) as [w], aiohttp.ClientSession() as s:
        answers: list[tuple[int, dict[str, Any]]] = []
        uploaded = asyncio.Event()
        polls: list[float] = []  # polls completed at the upload and at the first new answer

        async def client_loop() -> None:
            """Until 50 answers of the new version (the load is bounded by the timeout)."""
            while sum(1 for _, d in answers if d.get("model_version") == "2") < 50:
                status, doc, _ = await infer(s, w.endpoint, "m")
                answers.append((status, doc))
                if len(answers) == 100:
                    uploaded.set()

        async def polls_done() -> float:
            return (await samples(s, w.endpoint))[("mark_worker_store_polls_total", "")]

        async def upload() -> tuple[float, float]:
            await uploaded.wait()
            client.put_object(Bucket=bucket, Key="models/m.onnx", Body=onnx_bytes(2.0))
            at = time.perf_counter()
            polls.append(await polls_done())
            while not any(d.get("model_version") == "2" for _, d in answers[-8:]):
                await asyncio.sleep(0.005)
            new_at = time.perf_counter()
            polls.append(await polls_done())
            return at, new_at

        async with asyncio.timeout(60):
            results = await asyncio.gather(*(client_loop() for _ in range(8)), upload())
        at, first_new = results[-1]
        assert {status for status, _ in answers} == {200}
        for _, doc in answers:
            scale = {"1": 1.0, "2": 2.0}[doc["model_version"]]
            np.testing.assert_allclose(doc["outputs"][0]["data"], expected(scale)[0])
        # within one poll: the poll in progress at the upload may have listed the old ETag, the
        # next one reloads (one more may complete before the second read of the counter)
        assert polls[1] - polls[0] <= 3
        m = await samples(s, w.endpoint)
        assert m[("mark_worker_model_reloads_total", "model=m")] == 1
        idx = await index(s, w.endpoint)
        assert idx["m"] == {"name": "m", "version": "2", "state": "READY", "reason": ""}
        old = sum(1 for _, d in answers[100:] if d["model_version"] == "1")
        print(f"\n{len(answers)} requests, 0 failed; new version served "
              f"{first_new - at:.3f} s after the upload (poll {poll_s} s); {old} answers by the "
              f"old version after the upload; {polls[1] - polls[0]:.0f} polls between")  # fmt: skip


async def test_missing_and_corrupt_artifacts_503_oversize_422_and_the_worker_stays_up(
    tmp_path: Path,
) -> None:
    good = write_model(tmp_path, "good", 1.0)
    (tmp_path / "bad.onnx").write_bytes(b"not an onnx model")
    write_model(tmp_path, "big", 1.0, features=4096)
    gone = write_model(tmp_path, "gone", 1.0)
    budget = good.stat().st_size * 3
    args = ["--store", str(tmp_path), "--memory-budget-bytes", str(budget), "--poll-s", "30"]
    async with workers(args) as [w], aiohttp.ClientSession() as s:
        for _ in range(2):  # a failed version is not loaded again until the artifact changes
            status, doc, headers = await infer(s, w.endpoint, "bad")
            assert status == 503 and "load failed" in doc["error"]
            assert int(headers["Retry-After"]) >= 1 and REFUSED_HEADER not in headers
        assert (await samples(s, w.endpoint))[
            ("mark_worker_model_load_failures_total", "model=bad")
        ] == 1
        assert (await infer(s, w.endpoint, "good"))[0] == 200
        status, doc, _ = await infer(s, w.endpoint, "nope")
        assert status == 404 and "unknown model" in doc["error"]
        async with s.post(f"{w.endpoint}/v2/repository/models/big/load") as r:
            assert r.status == 422 and "whole budget" in (await r.json())["error"]
        assert (await infer(s, w.endpoint, "big"))[0] == 422

        assert (await infer(s, w.endpoint, "gone"))[0] == 200
        async with s.post(f"{w.endpoint}/v2/repository/models/gone/unload") as r:
            assert r.status == 200
        gone.unlink()
        status, doc, _ = await infer(s, w.endpoint, "gone")
        assert status == 503 and "artifact missing" in doc["error"]

        idx = await index(s, w.endpoint)
        assert idx["bad"]["state"] == "UNAVAILABLE" and "load failed" in idx["bad"]["reason"]
        assert idx["good"]["state"] == "READY"
        write_model(tmp_path, "bad", 2.0)  # repaired: the new version loads
        status, doc, _ = await infer(s, w.endpoint, "bad")
        assert status == 200, doc
        np.testing.assert_allclose(doc["outputs"][0]["data"], expected(2.0)[0])
        assert (await infer(s, w.endpoint, "good"))[0] == 200


async def test_disk_tier_deletes_the_least_recent_artifact_past_its_budget(tmp_path: Path) -> None:
    size = max(write_model(tmp_path, name, 1.0).stat().st_size for name in ("m1", "m2"))
    budget = str(int(size * 1.5))  # one model in memory, one artifact on disk
    args = ["--store", str(tmp_path), "--memory-budget-bytes", budget,
            "--disk-budget-bytes", budget, "--protect-s", "0", "--poll-s", "0"]  # fmt: skip
    async with workers(args) as [w], aiohttp.ClientSession() as s:
        for model in ("m1", "m2", "m1"):
            assert (await infer(s, w.endpoint, model))[0] == 200
        m = await samples(s, w.endpoint)
        assert (_loads(m, "m1"), _loads(m, "m1", "disk"), _loads(m, "m2")) == (2, 0, 1)
        for model in ("m1", "m2"):
            assert m[(EVICTIONS, f"model={model},reason=lru,tier=disk")] == 1
        assert m[("mark_worker_disk_used_bytes", "")] <= size * 1.5
        assert "evicted from memory and disk" in (await index(s, w.endpoint))["m2"]["reason"]


async def test_an_unreachable_store_is_a_503_with_the_reason(
    moto_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(moto_url for the fake credentials it sets; the store's endpoint is a closed port.)"""
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's retries would only slow the test
    args = ["--model", "demo=builtin:mlp", "--store", "s3://bucket/models",
            "--store-endpoint-url", "http://127.0.0.1:9", "--poll-s", "0"]  # fmt: skip
    async with workers(args) as [w], aiohttp.ClientSession() as s:
        status, doc, headers = await infer(s, w.endpoint, "m")
        assert status == 503 and "model store unreachable" in doc["error"]
        assert int(headers["Retry-After"]) >= 1
        assert set(await index(s, w.endpoint)) == {"demo"}  # what is loaded still lists
        async with s.get(f"{w.endpoint}/v2/models/demo") as r:
            assert r.status == 200
