"""The spill monitor (frontend/spill_monitor.py) and its hooks in the fleet: the queue walk on
its own, then in-process Fleets against real `mark worker` subprocesses and the real local
serverless pool reached through its Lambda Invoke API with boto3 (`build_pool`), with the cost
written to a real SQLite ledger."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from frontend.batcher import QueuedRequest
from frontend.fleet import Answer, Fleet, Unavailable
from frontend.spill_monitor import SpillLedger, SpillMonitor
from mark.adapters.backends import BackendRejected
from mark.adapters.db import Database
from mark.apps.worker.loaders import load_model
from mark.core.config import BatchingConfig, ServerlessConfig, SpillConfig
from mark.core.protocol import InferRequest, Tensor
from mark.core.types import InstanceState, Slo
from provisioner.adapters.serverless import InvokeServer, LocalFunctionPool, build_pool
from provisioner.policy.spill import QueueView, ServerlessProfile, SpillReason
from tests.dataplane import linear_profile, model, running, workers

MLP = load_model("reference", "builtin:mlp")
SLO = Slo(latency_ms=500, percentile=0.98)
POOL = ServerlessProfile(warm_ms=50, cold_start_ms=1000, idle_warm=2, free_slots=3)


def _expected(rows: np.ndarray) -> np.ndarray:
    return MLP.predict({"input": rows.astype(np.float32)})["output"]


def _request(rows: np.ndarray) -> InferRequest:
    return InferRequest((Tensor.of("input", rows.astype(np.float32)),))


def _queued(arrival_s: float, deadline_s: float) -> QueuedRequest:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    return QueuedRequest("demo", _request(np.zeros((1, 16))), arrival_s, deadline_s, future)


def _spills(model_name: str, reason: str) -> float:
    labels = {"model": model_name, "reason": reason}
    return REGISTRY.get_sample_value("mark_spill_total", labels) or 0.0


# --- the front end's requests to the queue walk ----------------------------------------------


async def test_select_skips_answered_requests_and_keeps_failed_spills_queued() -> None:
    pool = LocalFunctionPool(ServerlessConfig(concurrency=1, memory_mb=1024))
    monitor = SpillMonitor(pool, SpillConfig(margin_ms=20))
    queue = QueueView(ahead=0, service_rate_rps=1.0, batch_service_ms=50.0,
                      running_instances=1)  # fmt: skip
    pending = [_queued(0.0, 0.5) for _ in range(8)]
    pending[1].spill_error = "Throttled: all busy"
    pending[2].future.set_result(None)
    one_slot = ServerlessProfile(warm_ms=50, cold_start_ms=1000, idle_warm=1, free_slots=1)
    try:
        chosen, left = monitor.select(pending, queue, slo=SLO, now_s=0.0, pool=one_slot)
    finally:
        await monitor.close()
    # 0 fits (completes at 0.05 s); 1 failed before: stays; 2 answered: skipped; 3 is at
    # position 2: spills and takes the last slot
    assert [(pending.index(q), r) for q, r in chosen] == [(3, SpillReason.DEADLINE)]
    assert left.free_slots == 0


# --- in-process fleets with the real pool -----------------------------------------------------


@dataclass
class Spillway:
    pool: LocalFunctionPool
    url: str
    db: Database


@pytest.fixture
async def spillway(tmp_path: Path) -> AsyncIterator[Spillway]:
    pool = LocalFunctionPool(ServerlessConfig(concurrency=4, memory_mb=1024, timeout_s=60))
    server = InvokeServer(pool)
    url = await server.start()
    db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'mark.db'}")
    try:
        yield Spillway(pool, url, db)
    finally:
        await server.close()
        await pool.close()
        await db.close()


def _monitor(way: Spillway, **serverless: Any) -> SpillMonitor:
    config = ServerlessConfig(provider="local", concurrency=4, api_max_attempts=1, **serverless)
    pool = build_pool(config, local_endpoint_url=way.url)
    assert pool is not None
    ledger = SpillLedger(way.db, flush_interval_s=0.2)
    return SpillMonitor(pool, SpillConfig(interval_ms=10.0), ledger=ledger)


async def test_cold_fleet_spills_to_the_pool_and_the_cost_reaches_the_ledger(
    spillway: Spillway,
) -> None:
    before = _spills("demo", "cold-fleet")
    fleet = Fleet(BatchingConfig(), spill=_monitor(spillway))
    fleet.set_models([model("demo", slo_ms=30_000.0)])  # no instance at all: cold start fits
    rows = np.random.default_rng(4).normal(size=(2, 16))
    try:
        answer = await fleet.infer("demo", _request(rows))
    finally:
        await fleet.close()  # flushes the ledger
    assert answer.path == "serverless"
    np.testing.assert_allclose(answer.response.outputs[0].array, _expected(rows), rtol=1e-5)
    assert _spills("demo", "cold-fleet") == before + 1
    costs = await spillway.db.costs()
    assert costs.serverless_requests == 1 and costs.serverless_usd > 0


async def test_a_spilled_request_that_does_not_fit_the_model_gets_a_400_and_is_billed(
    spillway: Spillway,
) -> None:
    """With no instance yet, the front end has no metadata to check a request against; the
    function checks it, and a wrong shape is the caller's 400, not a failed spill's 503."""
    fleet = Fleet(BatchingConfig(), spill=_monitor(spillway))
    fleet.set_models([model("demo", slo_ms=30_000.0)])
    try:
        with pytest.raises(BackendRejected) as rejected:
            await fleet.infer("demo", _request(np.zeros((1, 3))))
    finally:
        await fleet.close()
    assert rejected.value.status == 400
    assert "shape" in rejected.value.message and "[-1, 16]" in rejected.value.message
    costs = await spillway.db.costs()
    assert costs.serverless_requests == 1 and costs.serverless_usd > 0


async def test_a_burst_spills_through_the_invoke_api_and_meets_the_slo(
    spillway: Spillway,
) -> None:
    # One instance paced to 20 ms per request (50/s) gets 100 requests at 200/s: what it
    # cannot answer within the SLO goes to the pool, pre-warmed as MArk warms Lambda.
    slow = linear_profile("c5.large", 0.0, 20.0, max_batch=1)
    demo = model("demo", slo_ms=1000.0, profiles=[slow], max_batch=1)
    pace = ["--model", "demo=builtin:mlp", "--instance-type", "c5.large", "--profiles",
            json.dumps({"demo": slow.model_dump(mode="json")})]  # fmt: skip
    before = _spills("demo", "deadline")
    async with workers(pace) as [w]:
        monitor = _monitor(spillway)
        fleet = Fleet(BatchingConfig(max_inflight_batches=1), spill=monitor)
        fleet.set_models([demo])
        fleet.set_instances([running("i-1", w.endpoint)])
        warm = {"model": "demo", "artifact": demo.backend.artifact, "warm": True}
        await asyncio.gather(*(monitor.pool.invoke(warm) for _ in range(4)))
        rows = np.random.default_rng(8).normal(size=(100, 16))
        answers: dict[int, tuple[Answer | Exception, float]] = {}

        async def one(i: int) -> None:
            started = time.perf_counter()
            try:
                result: Answer | Exception = await fleet.infer("demo", _request(rows[i : i + 1]))
            except Unavailable as exc:
                result = exc
            assert i not in answers
            answers[i] = (result, time.perf_counter() - started)

        try:
            tasks = []
            for i in range(100):
                tasks.append(asyncio.create_task(one(i)))
                await asyncio.sleep(1 / 200)
            await asyncio.gather(*tasks)
        finally:
            await fleet.close()
    assert sorted(answers) == list(range(100))
    served = {i: a for i, (a, _) in answers.items() if isinstance(a, Answer)}
    spilled = [i for i, a in served.items() if a.path == "serverless"]
    assert len(served) == 100, [str(a) for a, _ in answers.values() if not isinstance(a, Answer)]
    assert len(spilled) >= 10 and len(spilled) < 100
    for i, a in served.items():
        np.testing.assert_allclose(
            a.response.outputs[0].array, _expected(rows[i : i + 1]), rtol=1e-4, atol=1e-5
        )
    within = sum(answers[i][1] <= demo.slo.latency_s for i in spilled) / len(spilled)
    assert within >= 0.9
    assert _spills("demo", "deadline") >= before + len(spilled) - 5
    costs = await spillway.db.costs()
    assert costs.serverless_requests >= len(spilled)
    assert costs.serverless_usd > 0


async def test_a_failed_spill_goes_back_to_the_instances_or_gets_one_503(
    spillway: Spillway,
) -> None:
    # The pool answers ResourceNotFound (wrong function name): every spill fails.
    slow = linear_profile("c5.large", 0.0, 30.0, max_batch=1)
    demo = model("demo", slo_ms=2000.0, profiles=[slow], max_batch=1)
    cold = model("cold", slo_ms=300.0)
    pace = ["--model", "demo=builtin:mlp", "--instance-type", "c5.large", "--profiles",
            json.dumps({"demo": slow.model_dump(mode="json")})]  # fmt: skip
    async with workers(pace) as [w]:
        fleet = Fleet(BatchingConfig(max_inflight_batches=1),
                      spill=_monitor(spillway, function_name="nope"))  # fmt: skip
        fleet.set_models([demo, cold])
        fleet.set_instances([running("i-1", w.endpoint)])
        rows = np.zeros((1, 16))
        try:
            # 80 at once on one 30 ms instance: the tail is threatened, tries the pool, fails,
            # and goes back to the instance; those the instance cannot reach in time get a 503.
            results = await asyncio.gather(
                *(fleet.infer("demo", _request(rows)) for _ in range(80)),
                return_exceptions=True,
            )
            with pytest.raises(Unavailable, match="serverless pool failed"):
                await fleet.infer("cold", _request(rows))
        finally:
            await fleet.close()
    answered = [r for r in results if isinstance(r, Answer)]
    refused = [r for r in results if isinstance(r, Unavailable)]
    assert len(answered) + len(refused) == 80
    assert all(a.path == "instance" for a in answered) and len(answered) >= 50
    assert all("pool" in r.reason for r in refused)


async def test_requests_queued_on_a_draining_instance_spill(spillway: Spillway) -> None:
    slow = linear_profile("c5.large", 0.0, 50.0, max_batch=1)
    demo = model("demo", slo_ms=10_000.0, profiles=[slow], max_batch=1)
    pace = ["--model", "demo=builtin:mlp", "--instance-type", "c5.large", "--profiles",
            json.dumps({"demo": slow.model_dump(mode="json")})]  # fmt: skip
    before = _spills("demo", "draining")
    async with workers(pace, pace) as ws:
        fleet = Fleet(BatchingConfig(max_inflight_batches=1), spill=_monitor(spillway))
        fleet.set_models([demo])
        instances = [running(f"i-{k}", w.endpoint) for k, w in enumerate(ws)]
        fleet.set_instances(instances)
        await fleet.admitted()
        rows = np.random.default_rng(9).normal(size=(20, 16))
        try:
            tasks = [
                asyncio.create_task(fleet.infer("demo", _request(rows[i : i + 1])))
                for i in range(20)
            ]
            await asyncio.sleep(0.01)  # all routed: each instance holds about half
            drained = instances[0].transition(InstanceState.DRAINING, 1.0)
            fleet.set_instances([drained, instances[1]])
            assert fleet.routable("demo") == ["i-1"]
            answers = await asyncio.gather(*tasks)
        finally:
            await fleet.close()
    paths = [a.path for a in answers]
    assert paths.count("serverless") >= 1 and len(answers) == 20
    assert _spills("demo", "draining") >= before + paths.count("serverless") - 1 > before
    for i, a in enumerate(answers):
        np.testing.assert_allclose(
            a.response.outputs[0].array, _expected(rows[i : i + 1]), rtol=1e-4, atol=1e-5
        )


def test_ledger_rows_are_batched_per_model_and_reason(tmp_path: Path) -> None:
    async def run() -> tuple[int, float]:
        db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")
        pool = LocalFunctionPool(ServerlessConfig(concurrency=1, memory_mb=1024))
        try:
            ledger = SpillLedger(db, flush_interval_s=60.0)
            invocation = await pool.invoke({"model": "m", "artifact": "builtin:mlp", "warm": True})
            for _ in range(5):
                ledger.record("m", "deadline", invocation)
            assert ledger.unwritten_usd == pytest.approx(5 * invocation.cost_usd)
            await ledger.close()
            assert ledger.unwritten_usd == 0
            costs = await db.costs()
            return costs.serverless_requests, costs.serverless_usd / invocation.cost_usd
        finally:
            await pool.close()
            await db.close()

    requests, multiple = asyncio.run(run())
    assert requests == 5 and multiple == pytest.approx(5.0)
