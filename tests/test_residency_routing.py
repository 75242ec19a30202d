"""Routing by residency (frontend/residency.py, issue 19 item 3): in-process Fleets against real
many-model `mark worker` processes with a small memory budget, a real third-party-like server
without the repository API, and the real local serverless pool."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from frontend import metrics
from frontend.answers import Shed
from frontend.fleet import Answer, Fleet, Unavailable
from frontend.residency import NO_REPOSITORY_API, Backoff, Residency
from frontend.spill_monitor import SpillMonitor
from mark.adapters.db import Database
from mark.core.config import BatchingConfig, ServerlessConfig, SpillConfig, load_config
from mark.core.protocol import LOAD_PIN_HEADER, InferRequest, Tensor
from mark.core.types import Model
from provisioner.adapters.serverless import Invocation, LocalFunctionPool, Throttled
from provisioner.policy.spill import ServerlessProfile
from tests.conftest import free_port
from tests.dataplane import WorkerProcess, front_end, model, running, workers
from tests.model_artifacts import body, expected, row, samples, write_model

SCALES = {"m1": 1.0, "m2": 2.0, "m3": 3.0, "m4": 4.0}
LOADS = "mark_frontend_model_loads_total"
# "gone" is in no store: its load fails; "corrupt" is in the store but no ONNX graph
GROUP = ("m1", "m2", "m3", "m4", "gone", "corrupt")


@dataclass
class Pair:
    """Two many-model workers over one store, m1 loaded on `a`, m2 on `b`."""

    a: WorkerProcess
    b: WorkerProcess
    models: list[Model]


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    store = tmp_path / "store"
    store.mkdir()
    paths = {name: write_model(store, name, scale) for name, scale in SCALES.items()}
    (store / "corrupt.onnx").write_bytes(b"not an onnx graph")
    size = max(p.stat().st_size for p in paths.values())
    config = tmp_path / "worker.toml"
    config.write_text(f"[worker]\nmemory_budget_bytes = {2 * size + size // 2}\n")  # two fit
    args = ["--store", str(store), "--config", str(config), "--protect-s", "0", "--poll-s", "0"]
    models = [model(n, slo_ms=30_000.0, artifact=f"onnx:{paths[n]}") for n in SCALES]
    models.append(model("gone", slo_ms=30_000.0, artifact="onnx:/nonexistent/gone.onnx"))
    models.append(model("corrupt", slo_ms=30_000.0, artifact=f"onnx:{store / 'corrupt.onnx'}"))
    async with workers(args, args) as [a, b], aiohttp.ClientSession() as s:
        for w, name in ((a, "m1"), (b, "m2")):
            async with s.post(f"{w.endpoint}/v2/repository/models/{name}/load") as r:
                assert r.status == 200
        yield Pair(a, b, models)


async def _fleet(pair: Pair, *, spill: SpillMonitor | None = None, **batching: Any) -> Fleet:
    fleet = Fleet(BatchingConfig(**batching), spill=spill)
    fleet.set_models(pair.models)
    fleet.set_instances(
        [running("a", pair.a.endpoint, GROUP), running("b", pair.b.endpoint, GROUP)]
    )
    await fleet.refresh_residency()
    return fleet


def _request() -> InferRequest:
    return InferRequest((Tensor.of("input", np.asarray([row()], dtype=np.float32)),))


def _check(answer: Answer, name: str) -> None:
    np.testing.assert_allclose(answer.response.outputs[0].array, expected(SCALES[name]), rtol=1e-5)


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _front_end_loads(model_name: str, outcome: str = "ok") -> float:
    return sum(_sample(LOADS, model=model_name, instance=i, outcome=outcome) for i in ("a", "b"))


async def _worker_loads(pair: Pair, model_name: str) -> float:
    """Loads of `model_name` into memory on both workers, from any source."""
    total = 0.0
    async with aiohttp.ClientSession() as s:
        for w in (pair.a, pair.b):
            for (sample, labels), value in (await samples(s, w.endpoint)).items():
                if sample == "mark_worker_model_loads_total" and f"model={model_name}," in labels:
                    total += value
    return total


async def _burst(fleet: Fleet, name: str, count: int) -> Sequence[Answer | BaseException]:
    return await asyncio.gather(
        *(fleet.infer(name, _request()) for _ in range(count)), return_exceptions=True
    )


async def test_requests_go_where_the_model_is_resident_and_a_miss_loads_it_once(
    pair: Pair,
) -> None:
    fleet = await _fleet(pair)
    loads_before = _front_end_loads("m3")
    try:
        assert fleet.resident("m1") == ["a"] and fleet.resident("m2") == ["b"]
        assert fleet.resident("m3") == []
        assert fleet.routable("m3") == ["a", "b"]  # either would load it
        for name, where in (("m1", "a"), ("m2", "b")):
            for answer in await asyncio.gather(*(fleet.infer(name, _request()) for _ in range(8))):
                assert answer.instance_id == where
                _check(answer, name)
        # m3 is resident nowhere: five concurrent requests share one load on one worker
        answers = await _burst(fleet, "m3", 5)
        assert all(isinstance(a, Answer) for a in answers), answers
        places = {a.instance_id for a in answers if isinstance(a, Answer)}
        assert len(places) == 1
        for result in answers:
            assert isinstance(result, Answer)
            _check(result, "m3")
        assert _front_end_loads("m3") == loads_before + 1
        assert await _worker_loads(pair, "m3") == 1
        assert fleet.resident("m3") == list(places)
        await fleet.refresh_residency()  # the worker's index agrees
        assert fleet.resident("m3") == list(places)
        answer = await fleet.infer("m3", _request())
        assert isinstance(answer, Answer) and answer.instance_id in places
        assert await _worker_loads(pair, "m3") == 1
        # the front end's load did not pin m3 on a: m4 loads there in its place, and the next
        # index read says m3 left
        assert places == {"a"}
        answer = await fleet.infer("m4", _request())
        assert answer.instance_id == "a"
        _check(answer, "m4")
        await fleet.refresh_residency()
        assert fleet.resident("m4") == ["a"] and fleet.resident("m3") == []
    finally:
        await fleet.close()


async def test_each_batchs_time_in_service_is_counted_per_instance_and_model(
    pair: Pair,
) -> None:
    """What the ledger shares an instance's charge by (mark_instance_busy_seconds)."""
    busy = "mark_instance_busy_seconds_total"
    keys = [(m, i) for m in ("m1", "m2") for i in ("a", "b")]
    before = {k: _sample(busy, model=k[0], instance=k[1]) for k in keys}
    fleet = await _fleet(pair)
    try:
        for name in ("m1", "m1", "m1", "m2"):
            _check(await fleet.infer(name, _request()), name)
    finally:
        await fleet.close()
    metrics.flush()
    grown = {k: _sample(busy, model=k[0], instance=k[1]) - before[k] for k in keys}
    assert grown[("m1", "a")] > 0 and grown[("m2", "b")] > 0  # where each was resident
    assert grown[("m1", "b")] == 0 and grown[("m2", "a")] == 0


async def test_a_burst_beyond_the_hold_cap_gets_429_with_retry_after(pair: Pair) -> None:
    shed_before = _sample("mark_inference_shed_total", model="m4", reason="hold-full")
    fleet = await _fleet(pair, max_held_per_model=2)
    try:
        results = await _burst(fleet, "m4", 6)
    finally:
        await fleet.close()
    answered = [r for r in results if isinstance(r, Answer)]
    shed = [r for r in results if isinstance(r, Shed)]
    assert len(answered) == 2 and len(shed) == 4, results
    for answer in answered:
        _check(answer, "m4")
    for refusal in shed:
        assert refusal.status == 429 and refusal.cause == "hold-full"
        assert refusal.retry_after_s is not None and refusal.retry_after_s >= 1
        assert "batching.max_held_per_model" in refusal.reason and "spill is off" in refusal.reason
    metrics.flush()
    assert _sample("mark_inference_shed_total", model="m4", reason="hold-full") == shed_before + 4
    assert _sample("mark_inference_held_requests", model="m4") == 0
    assert await _worker_loads(pair, "m4") == 1


@pytest.fixture
async def pool() -> AsyncIterator[LocalFunctionPool]:
    pool = LocalFunctionPool(ServerlessConfig(concurrency=4, memory_mb=1024, timeout_s=60))
    try:
        yield pool
    finally:
        await pool.close()


async def test_beyond_the_hold_cap_requests_spill_when_a_pool_is_configured(
    pair: Pair, pool: LocalFunctionPool
) -> None:
    fleet = await _fleet(pair, spill=SpillMonitor(pool, SpillConfig()), max_held_per_model=2)
    try:
        results = await _burst(fleet, "m4", 6)
    finally:
        await fleet.close()
    assert all(isinstance(r, Answer) for r in results), results
    paths = sorted(r.path for r in results if isinstance(r, Answer))
    assert paths == ["instance"] * 2 + ["serverless"] * 4
    for answer in results:
        assert isinstance(answer, Answer)
        _check(answer, "m4")
    assert await _worker_loads(pair, "m4") == 1


async def test_a_request_that_cannot_wait_for_the_load_spills_and_the_load_goes_on(
    pair: Pair, pool: LocalFunctionPool
) -> None:
    loads_before = _front_end_loads("m4")
    # expected load time 60 s, SLO 30 s: waiting for the load would miss the deadline
    fleet = await _fleet(pair, spill=SpillMonitor(pool, SpillConfig()), default_load_s=60.0)
    try:
        answer = await fleet.infer("m4", _request())
        assert answer.path == "serverless"
        _check(answer, "m4")
        async with asyncio.timeout(30):  # the load started for it serves the next requests
            while not fleet.resident("m4"):
                await asyncio.sleep(0.02)
        answer = await fleet.infer("m4", _request())
        assert answer.path == "instance" and answer.instance_id == "a"
        _check(answer, "m4")
    finally:
        await fleet.close()
    assert _front_end_loads("m4") == loads_before + 1
    assert await _worker_loads(pair, "m4") == 1


async def test_a_load_refused_for_want_of_room_goes_to_the_next_instance(pair: Pair) -> None:
    """Worker a holds m1 and m3, both pinned: it refuses m4 (503, no room) and b loads it."""
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{pair.a.endpoint}/v2/repository/models/m3/load") as r:
            assert r.status == 200
    refused_before = _sample(LOADS, model="m4", instance="a", outcome="no-room")
    ok_before = _sample(LOADS, model="m4", instance="b", outcome="ok")
    fleet = await _fleet(pair)
    try:
        results = await _burst(fleet, "m4", 3)
        assert fleet.resident("m4") == ["b"]
    finally:
        await fleet.close()
    for result in results:
        assert isinstance(result, Answer) and result.instance_id == "b", results
        _check(result, "m4")
    assert _sample(LOADS, model="m4", instance="a", outcome="no-room") == refused_before + 1
    assert _sample(LOADS, model="m4", instance="b", outcome="ok") == ok_before + 1


async def test_when_every_load_fails_held_requests_get_503_and_the_reason(pair: Pair) -> None:
    failed_before = _front_end_loads("gone", "failed")
    fleet = await _fleet(pair)
    try:
        results = await _burst(fleet, "gone", 3)
    finally:
        await fleet.close()
    for result in results:
        assert isinstance(result, Unavailable) and result.status == 503, results
        assert "loading it on instance b failed" in result.reason  # a was tried first
        assert "unknown model" in result.reason  # the worker's own answer
    assert _front_end_loads("gone", "failed") == failed_before + 2


async def test_an_instance_that_evicted_a_model_moves_its_request_and_stays_in_service(
    pair: Pair,
) -> None:
    """The front end read a's index (m1 there); then a unloaded m1 and pinned m3 and m4, with
    no room left for m1: a's 503 for m1 moves the request to b, which loads it, and a is not
    ejected: it goes on serving m3."""
    retries = "mark_inference_retries_total"
    retried_before = _sample(retries, model="m1", reason="not-resident")
    errors_before = _sample("mark_instance_errors_total", model="m1", instance="a")
    fleet = await _fleet(pair)
    try:
        assert fleet.resident("m1") == ["a"]
        async with aiohttp.ClientSession() as s:
            for path in ("m1/unload", "m3/load", "m4/load"):
                async with s.post(f"{pair.a.endpoint}/v2/repository/models/{path}") as r:
                    assert r.status == 200
        assert fleet.resident("m1") == ["a"]  # the front end's view is one read old
        answer = await fleet.infer("m1", _request())
        assert answer.path == "instance" and answer.instance_id == "b"
        _check(answer, "m1")
        assert fleet.resident("m1") == ["b"]
        assert sorted(fleet.routable("m1")) == ["a", "b"]  # a was not ejected
        await fleet.refresh_residency()
        assert fleet.resident("m3") == ["a"]
        answer = await fleet.infer("m3", _request())
        assert answer.instance_id == "a"
        _check(answer, "m3")
    finally:
        await fleet.close()
    metrics.flush()
    assert _sample(retries, model="m1", reason="not-resident") == retried_before + 1
    assert _sample("mark_instance_errors_total", model="m1", instance="a") == errors_before
    assert _sample("mark_instance_ejected", model="m1", instance="a") == 0


async def test_a_corrupt_model_is_loaded_once_per_back_off_and_its_requests_get_503(
    pair: Pair,
) -> None:
    """Each worker fails to load `corrupt` (503: load failed): under a stream of requests
    each is asked once within the back-off, and every request is answered 503 with the
    worker's reason and Retry-After."""
    failed_before = _front_end_loads("corrupt", "failed")
    fleet = await _fleet(pair, load_backoff_base_s=600.0, load_backoff_max_s=600.0)
    try:
        results = [await _burst(fleet, "corrupt", 2) for _ in range(5)]
        assert sorted(fleet.routable("m1")) == ["a", "b"]  # neither was ejected
    finally:
        await fleet.close()
    for result in (r for burst in results for r in burst):
        assert isinstance(result, Unavailable) and result.status == 503, results
        assert "load failed" in result.reason, result.reason  # the worker's own answer
        assert result.retry_after_s is not None and result.retry_after_s >= 1
    assert "spill is off" in str(results[-1][0])
    assert _front_end_loads("corrupt", "failed") == failed_before + 2  # a once, b once


async def test_a_corrupt_models_requests_go_to_the_pool_while_its_loads_back_off(
    pair: Pair, pool: LocalFunctionPool
) -> None:
    """With a pool, the requests a failed load held and those that find every instance
    backing off are sent there (which fails to load the artifact too: 503 with its reason)."""
    spill = SpillMonitor(pool, SpillConfig())
    failed_before = _front_end_loads("corrupt", "failed")
    fleet = await _fleet(pair, spill=spill, load_backoff_base_s=600.0, load_backoff_max_s=600.0)
    try:
        results = [await _burst(fleet, "corrupt", 2) for _ in range(3)]
    finally:
        await fleet.close()
    for result in (r for burst in results for r in burst):
        assert isinstance(result, Unavailable) and result.status == 503, results
        assert "the serverless pool failed" in result.reason, result.reason
    assert _front_end_loads("corrupt", "failed") == failed_before + 2


@contextlib.asynccontextmanager
async def _full_pair(tmp_path: Path, protect_s: float) -> AsyncIterator[Pair]:
    """Two workers with room for two models each, both holding m1 and m2, loaded as the front
    end loads (unpinned: protected for `protect_s` from their load, as if just used)."""
    store = tmp_path / "store"
    store.mkdir()
    paths = {name: write_model(store, name, scale) for name, scale in SCALES.items()}
    size = max(p.stat().st_size for p in paths.values())
    args = ["--store", str(store), "--memory-budget-bytes", str(2 * size + size // 2),
            "--protect-s", str(protect_s), "--poll-s", "0"]  # fmt: skip
    models = [model(n, slo_ms=30_000.0, artifact=f"onnx:{paths[n]}") for n in SCALES]
    unpinned = {LOAD_PIN_HEADER: "false"}
    async with workers(args, args) as [a, b], aiohttp.ClientSession(headers=unpinned) as s:
        for w in (a, b):
            for name in ("m1", "m2"):
                async with s.post(f"{w.endpoint}/v2/repository/models/{name}/load") as r:
                    assert r.status == 200
        yield Pair(a, b, models)


class _FullPool:
    """The local function pool with its every slot taken (by the other front ends' spills)
    until `full` is set False: its profile has no free slot and an invocation is throttled."""

    def __init__(self, pool: LocalFunctionPool) -> None:
        self.pool = pool
        self.name = pool.name
        self.memory_mb = pool.memory_mb
        self.observed = pool.observed
        self.full = True

    async def invoke(self, event: Mapping[str, Any]) -> Invocation:
        if self.full:
            raise Throttled("every slot is taken")
        return await self.pool.invoke(event)

    def profile(self, model: str, default_warm_ms: float) -> ServerlessProfile:
        found = self.pool.profile(model, default_warm_ms)
        return replace(found, free_slots=0) if self.full else found

    async def warm(self, model: str, artifact: str, count: int) -> list[Invocation]:
        return await self.pool.warm(model, artifact, count)

    async def close(self) -> None:
        await self.pool.close()


async def _refusals_reach(name: str, count: float) -> None:
    """Until the front end counted `count` loads of `name` refused for want of room."""
    async with asyncio.timeout(20):
        while _front_end_loads(name, "no-room") < count:
            await asyncio.sleep(0.01)


async def test_a_model_no_worker_has_room_for_waits_for_a_protection_to_lapse_then_loads(
    tmp_path: Path, pool: LocalFunctionPool
) -> None:
    """Both workers are full of models in active rotation (protected for 2 s) and the pool
    has no free slot: a request for a third model is not refused at once (issue 19: a worker's
    protection holds while another candidate exists, and the requests for a model being loaded
    wait, bounded). Both refuse its load (no room); it waits, and once the protections lapse
    the load is asked for again, evicts the least recently used model and serves it."""
    refused_before = _front_end_loads("m3", "no-room")
    failed_before = _front_end_loads("m3", "failed")
    loaded_before = _front_end_loads("m3")
    async with _full_pair(tmp_path, protect_s=2.0) as full:
        fleet = await _fleet(full, spill=SpillMonitor(_FullPool(pool), SpillConfig()))
        try:
            answer = await fleet.infer("m3", _request())
            assert fleet.resident("m3") == [answer.instance_id]
        finally:
            await fleet.close()
        evictions = await _worker_evictions(full)
    assert answer.path == "instance"
    _check(answer, "m3")
    assert _front_end_loads("m3", "no-room") >= refused_before + 2  # a, then b, at first
    assert _front_end_loads("m3") == loaded_before + 1
    assert _front_end_loads("m3", "failed") == failed_before  # a refusal for room is none
    assert evictions == {answer.instance_id: 1}  # m1, the least recently used there


async def _worker_evictions(pair: Pair) -> dict[str, float]:
    """Models evicted from memory on each worker that evicted any, by the fleet's ids."""
    out: dict[str, float] = {}
    async with aiohttp.ClientSession() as s:
        for instance_id, w in (("a", pair.a), ("b", pair.b)):
            m = await samples(s, w.endpoint)
            count = sum(v for (n, _), v in m.items() if n == "mark_worker_model_evictions_total")
            if count:
                out[instance_id] = count
    return out


async def test_requests_waiting_for_room_spill_once_a_pool_slot_frees_bounded_by_the_hold_cap(
    tmp_path: Path, pool: LocalFunctionPool
) -> None:
    """Both workers full of models protected for a minute, the pool full: of a burst of three
    for m3, two wait for its load (`batching.max_held_per_model`) and the third gets 429 at
    once; both loads are refused for room and the two wait on; a fourth, finding every worker
    refusing, gets 429 too (the same bound). When a pool slot frees, the two spill."""
    full_pool = _FullPool(pool)
    async with _full_pair(tmp_path, protect_s=60.0) as full:
        fleet = await _fleet(
            full, spill=SpillMonitor(full_pool, SpillConfig()), max_held_per_model=2
        )
        refused_before = _front_end_loads("m3", "no-room")
        try:
            burst = [asyncio.ensure_future(fleet.infer("m3", _request())) for _ in range(3)]
            await _refusals_reach("m3", refused_before + 2)
            done = [t for t in burst if t.done()]
            assert len(done) == 1, burst  # the two held ones wait on
            with pytest.raises(Shed) as late:
                await fleet.infer("m3", _request())
            full_pool.full = False
            answers = await asyncio.gather(*(t for t in burst if not t.done()))
        finally:
            await fleet.close()
    shed = done[0].exception()
    assert isinstance(shed, Shed) and shed.cause == "hold-full", shed
    assert late.value.cause == "hold-full" and late.value.retry_after_s is not None
    assert "waiting for room on its instances" in late.value.reason, late.value.reason
    assert 30 <= late.value.retry_after_s <= 60  # when the first protection lapses
    for answer in answers:
        assert answer.path == "serverless"
        _check(answer, "m3")


async def test_a_request_that_waited_for_room_in_vain_gets_503_with_the_reason_and_retry_after(
    tmp_path: Path,
) -> None:
    """No pool, every worker full of models protected for a minute: a request for a third
    model waits its `batching.queue_timeout_s` for room, then gets 503 saying why, with
    Retry-After (when the first protection lapses)."""
    async with _full_pair(tmp_path, protect_s=60.0) as full:
        fleet = await _fleet(full, queue_timeout_s=1.0)
        try:
            with pytest.raises(Unavailable) as refused:
                await fleet.infer("m3", _request())
        finally:
            await fleet.close()
    assert refused.value.status == 503
    reason = refused.value.reason
    assert "none had room for it" in reason and "active rotation" in reason, reason
    assert "within 1 s (batching.queue_timeout_s)" in reason and "spill is off" in reason
    assert refused.value.retry_after_s is not None and refused.value.retry_after_s >= 30


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    """`app` listening on a free loopback port: its runner (to clean up) and its address."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def _solo_server() -> tuple[web.AppRunner, str]:
    """A single-model v2 server with no repository API (its index is a 404), only inference
    and the protocol's health route: y = 7."""

    async def ready(request: web.Request) -> web.Response:
        return web.Response()

    async def infer(request: web.Request) -> web.Response:
        await request.read()
        output = {"name": "output", "shape": [1, 1], "datatype": "FP32", "data": [7.0]}
        return web.json_response({"model_name": "solo", "outputs": [output]})

    app = web.Application()
    app.router.add_post("/v2/models/solo/infer", infer)
    app.router.add_get("/v2/health/ready", ready)
    return await _serve(app)


async def test_a_server_without_the_repository_api_gets_its_models_traffic() -> None:
    runner, endpoint = await _solo_server()
    fleet = Fleet(BatchingConfig())
    try:
        fleet.set_models([model("solo", slo_ms=30_000.0)])
        fleet.set_instances([running("solo-1", endpoint, ("solo",))])
        await fleet.admitted()
        await fleet.refresh_residency()
        assert fleet.resident("solo") == ["solo-1"]
        answer = await fleet.infer("solo", _request())
        assert answer.instance_id == "solo-1"
        assert answer.response.outputs[0].array.tolist() == [[7.0]]
    finally:
        await fleet.close()
        await runner.cleanup()


async def test_a_404_from_a_server_without_the_repository_api_leaves_it_in_service() -> None:
    """Listed as holding `other` too, the solo server answers 404 for it: `other` is marked not
    resident there and, the load it is then asked for failing too, answered 503 with the
    server's reason; the instance is not ejected and goes on serving `solo`."""
    runner, endpoint = await _solo_server()
    fleet = Fleet(BatchingConfig())
    try:
        fleet.set_models([model("solo", slo_ms=30_000.0), model("other", slo_ms=30_000.0)])
        fleet.set_instances([running("solo-1", endpoint, ("solo", "other"))])
        await fleet.admitted()
        await fleet.refresh_residency()
        assert fleet.resident("other") == ["solo-1"]  # the listing says so
        with pytest.raises(Unavailable) as refused:
            await fleet.infer("other", _request())
        assert refused.value.status == 503 and "HTTP 404" in refused.value.reason
        assert fleet.resident("other") == [] and fleet.routable("other") == ["solo-1"]
        answer = await fleet.infer("solo", _request())
        assert answer.instance_id == "solo-1"
        assert answer.response.outputs[0].array.tolist() == [[7.0]]
    finally:
        await fleet.close()
        await runner.cleanup()


async def _flaky_server(state: dict[str, bool]) -> tuple[web.AppRunner, str]:
    """A single-model v2 server (no repository API) that, while `state["broken"]`, answers every
    inference 503 with Retry-After, as an overloaded third-party server may, and fails its
    readiness; else it answers y = 8."""

    async def infer(request: web.Request) -> web.Response:
        await request.read()
        if state["broken"]:
            return web.json_response({"error": "overloaded"}, status=503,
                                     headers={"Retry-After": "1"})  # fmt: skip
        output = {"name": "output", "shape": [1, 1], "datatype": "FP32", "data": [8.0]}
        return web.json_response({"model_name": "solo", "outputs": [output]})

    async def ready(_: web.Request) -> web.Response:
        return web.json_response({}, status=503 if state["broken"] else 200)

    app = web.Application()
    app.router.add_post("/v2/models/solo/infer", infer)
    app.router.add_get("/v2/health/ready", ready)
    return await _serve(app)


async def test_an_instance_failing_behind_503s_with_retry_after_is_ejected_until_it_recovers() -> (
    None
):
    """A 503 with Retry-After does not eject an instance by itself (it may mean "not here, not
    now"), but it has the instance's health checked: one that fails the check is ejected (the
    gauge the control plane replaces instances by) and probed, and rejoins once it passes.
    Meanwhile every request is answered by the healthy instance."""
    state = {"broken": False}
    broken, broken_url = await _flaky_server(state)
    good, good_url = await _solo_server()
    fleet = Fleet(BatchingConfig(health_interval_s=0.2))
    ejected = "mark_instance_ejected"
    try:
        fleet.set_models([model("solo", slo_ms=30_000.0)])
        fleet.set_instances(
            [running("broken-1", broken_url, ("solo",)), running("good-1", good_url, ("solo",))]
        )
        await fleet.admitted()
        await fleet.refresh_residency()
        assert sorted(fleet.resident("solo")) == ["broken-1", "good-1"]
        state["broken"] = True  # in service, then failing as a whole behind 503s
        answers = [await fleet.infer("solo", _request()) for _ in range(4)]
        assert {a.instance_id for a in answers} == {"good-1"}
        async with asyncio.timeout(10):
            while fleet.routable("solo") != ["good-1"]:
                await asyncio.sleep(0.02)
        assert _sample(ejected, model="solo", instance="broken-1") == 1
        answers = [await fleet.infer("solo", _request()) for _ in range(4)]
        assert {a.instance_id for a in answers} == {"good-1"}
        state["broken"] = False  # recovered: its probe passes and it takes requests again
        async with asyncio.timeout(10):
            while sorted(fleet.resident("solo")) != ["broken-1", "good-1"]:
                await fleet.refresh_residency()  # the sync's: the refusal held until a read
                await asyncio.sleep(0.02)
        assert _sample(ejected, model="solo", instance="broken-1") == 0
        answers = [await fleet.infer("solo", _request()) for _ in range(4)]
        assert {a.instance_id for a in answers} == {"broken-1", "good-1"}
    finally:
        await fleet.close()
        await broken.cleanup()
        await good.cleanup()


async def _failing_server(state: dict[str, Any]) -> tuple[web.AppRunner, str]:
    """A v2 server of any model (no repository API) that, while `state["broken"]`, answers
    every inference 500 and fails its readiness; it counts its readiness checks."""

    async def infer(request: web.Request) -> web.Response:
        await request.read()
        if state["broken"]:
            return web.json_response({"error": "broken"}, status=500)
        output = {"name": "output", "shape": [1, 1], "datatype": "FP32", "data": [8.0]}
        return web.json_response({"model_name": request.match_info["m"], "outputs": [output]})

    async def ready(_: web.Request) -> web.Response:
        state["checks"] += 1
        return web.json_response({}, status=503 if state["broken"] else 200)

    app = web.Application()
    app.router.add_post("/v2/models/{m}/infer", infer)
    app.router.add_get("/v2/health/ready", ready)
    return await _serve(app)


async def test_an_ejected_instance_is_probed_once_per_interval_not_once_per_model() -> None:
    """Three models eject one failing instance, each on its own failed call: the instance is
    health-checked once per `batching.health_interval_s` for all of them, and each rejoins
    when that check passes."""
    state: dict[str, Any] = {"broken": False, "checks": 0}
    failing, failing_url = await _failing_server(state)
    good, good_url = await _failing_server({"broken": False, "checks": 0})
    names = ("p1", "p2", "p3")
    fleet = Fleet(BatchingConfig(health_interval_s=0.2))
    try:
        fleet.set_models([model(n, slo_ms=30_000.0) for n in names])
        fleet.set_instances(
            [running("failing", failing_url, names), running("good", good_url, names)]
        )
        await fleet.admitted()
        state["broken"] = True
        for name in names:  # each model's calls go round-robin: one of two fails and ejects
            for _ in range(2):
                assert (await fleet.infer(name, _request())).instance_id == "good"
        assert all(fleet.resident(n) == ["good"] for n in names)
        state["checks"] = 0
        await asyncio.sleep(1.0)  # five intervals: five checks for the three models
        assert 3 <= state["checks"] <= 7, state["checks"]
        state["broken"] = False
        async with asyncio.timeout(10):
            while not all(sorted(fleet.resident(n)) == ["failing", "good"] for n in names):
                await asyncio.sleep(0.02)
    finally:
        await fleet.close()
        await failing.cleanup()
        await good.cleanup()


async def _repository_server(ready: list[str], loads: list[str]) -> tuple[web.AppRunner, str]:
    """A v2 server with the repository API holding `ready`, which loads any model asked
    (recorded in `loads`) and answers y = 8."""

    async def index(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response([{"name": n, "state": "READY", "reason": ""} for n in ready])

    async def load(request: web.Request) -> web.Response:
        loads.append(request.match_info["m"])
        ready.append(request.match_info["m"])
        return web.json_response({})

    async def infer(request: web.Request) -> web.Response:
        await request.read()
        output = {"name": "output", "shape": [1, 1], "datatype": "FP32", "data": [8.0]}
        return web.json_response({"model_name": request.match_info["m"], "outputs": [output]})

    async def health(_: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/v2/repository/index", index)
    app.router.add_post("/v2/repository/models/{m}/load", load)
    app.router.add_post("/v2/models/{m}/infer", infer)
    app.router.add_get("/v2/health/ready", health)
    return await _serve(app)


async def test_a_cold_model_is_loaded_where_it_fits_before_a_full_instance() -> None:
    """Two instances, equally quick to load: the one listed first holds models that fill the
    workers' memory budget, the other nothing. A model resident nowhere is loaded on the one
    with room (the full one would evict, or refuse for models in active rotation)."""
    full_loads: list[str] = []
    free_loads: list[str] = []
    full, full_url = await _repository_server(["h1", "h2"], full_loads)
    free, free_url = await _repository_server([], free_loads)
    names = ("h1", "h2", "cold")
    models = [model(n, slo_ms=30_000.0).model_copy(update={"memory_mb": 100.0}) for n in names]
    fleet = Fleet(BatchingConfig(), memory_budget_mb=200.0)
    try:
        fleet.set_models(models)
        fleet.set_instances([running("full", full_url, names), running("free", free_url, names)])
        await fleet.admitted()
        await fleet.refresh_residency()
        assert fleet.resident("h1") == ["full"] and fleet.resident("cold") == []
        answer = await fleet.infer("cold", _request())
        assert answer.instance_id == "free"
        assert free_loads == ["cold"] and full_loads == []
    finally:
        await fleet.close()
        await full.cleanup()
        await free.cleanup()


async def test_the_front_end_learns_residency_on_its_sync_cadence(
    pair: Pair, tmp_path: Path
) -> None:
    """`mark serve`'s front end, synced from the database: until the first index read it takes
    the listing (m1 on both), then only the worker that holds m1; a miss over HTTP loads."""
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'mark.db'}"
    db = await Database.open(db_url)
    port = free_port()
    config = load_config(
        environ={},
        server={"port": port},
        database={"url": db_url},
        batching={"sync_interval_s": 0.05},
        spill={"enabled": False},
    )
    try:
        for m in pair.models:
            await db.create_model(m)
        await db.save_instance(running("a", pair.a.endpoint, GROUP))
        await db.save_instance(running("b", pair.b.endpoint, GROUP))
        async with front_end(config) as app, aiohttp.ClientSession() as s:
            async with asyncio.timeout(10):
                while app.ctx.fleet.resident("m1") != ["a"]:
                    await asyncio.sleep(0.02)
            assert app.ctx.fleet.resident("m2") == ["b"]
            async with s.get(f"http://127.0.0.1:{port}/v2/models/m3/ready") as r:
                assert r.status == 200  # resident nowhere, but loadable
            url = f"http://127.0.0.1:{port}/v2/models/m3/infer"
            async with s.post(url, json=body()) as r:
                assert r.status == 200, await r.text()
                doc = await r.json()
            np.testing.assert_allclose(doc["outputs"][0]["data"], expected(3.0)[0], rtol=1e-5)
            assert len(app.ctx.fleet.resident("m3")) == 1
    finally:
        await db.close()


async def test_residency_is_read_under_the_name_the_instance_serves_the_model_by(
    pair: Pair,
) -> None:
    """Mark's model `alias` is the workers' m2 (`backend_model_name`): it goes where m2 is."""
    alias = model("alias", slo_ms=30_000.0, backend_model_name="m2")
    fleet = Fleet(BatchingConfig())
    try:
        fleet.set_models([*pair.models, alias])
        listed = (*GROUP, "alias")
        fleet.set_instances([running("a", pair.a.endpoint, listed),
                             running("b", pair.b.endpoint, listed)])  # fmt: skip
        await fleet.refresh_residency()
        assert fleet.resident("alias") == ["b"]
        answer = await fleet.infer("alias", _request())
        assert answer.instance_id == "b"
        _check(answer, "m2")
    finally:
        await fleet.close()


async def test_an_unchanged_listing_still_gives_a_new_model_its_routes() -> None:
    """The fleet skips a sync whose instance listing did not change, unless a model was added
    since: the new model gets its routes from the same listing."""
    runner, endpoint = await _solo_server()
    fleet = Fleet(BatchingConfig())
    try:
        listing = [running("a", endpoint, ("x", "y")), running("b", endpoint, ("y",))]
        fleet.set_models([model("x")])
        fleet.set_instances(listing)
        await fleet.admitted()
        assert fleet.routable("x") == ["a"]
        fleet.set_models([model("x"), model("y")])
        fleet.set_instances(list(listing))
        await fleet.admitted()
        assert sorted(fleet.routable("y")) == ["a", "b"] and fleet.routable("x") == ["a"]
        fleet.set_instances(listing[:1])  # b left
        assert fleet.routable("y") == ["a"]
    finally:
        await fleet.close()
        await runner.cleanup()


def test_an_index_read_older_than_a_completed_load_is_not_applied() -> None:
    residency = Residency(default_load_s=5.0)
    instance = running("a", "http://127.0.0.1:1", ("m1", "m2"))
    assert residency.holds(instance, "m1", "m1")  # not read yet: the listing
    assert residency.apply("a", frozenset({"m1"}), generation=0)
    assert not residency.holds(instance, "m2", "m2")
    began = residency.generation.get("a", 0)
    residency.loaded("a", "m2", took_s=0.25)  # completes while a read is in flight
    assert not residency.apply("a", frozenset({"m1"}), generation=began)
    assert residency.holds(instance, "m2", "m2")
    assert residency.expected_load_s("a", "m2") == 0.25
    assert residency.expected_load_s("a", "m1") == 5.0
    assert residency.apply("a", NO_REPOSITORY_API, residency.generation["a"])
    assert residency.holds(instance, "m2", "m2")  # no index: the listing again
    residency.forget(())
    assert residency.expected_load_s("a", "m2") == 5.0


def test_a_refusal_for_want_of_room_backs_off_until_its_retry_after_and_is_no_failure() -> None:
    residency = Residency(default_load_s=5.0, backoff_base_s=2.0, backoff_max_s=60.0)
    residency.load_failed("a", "m1", "load failed: x", now_s=10.0)
    residency.no_room("a", "m1", "no room for 'm1'", until_s=15.0)
    assert residency.backoff("a", "m1", 14.0) == Backoff(1, 15.0, "no room for 'm1'", True)
    assert residency.backoff("a", "m1", 15.0) is None
    residency.load_failed("a", "m1", "load failed: y", now_s=20.0)  # the second in a row
    assert residency.backoff("a", "m1", 20.0) == Backoff(2, 24.0, "load failed: y")


def test_a_failed_load_backs_off_doubling_to_the_cap_and_a_success_ends_it() -> None:
    residency = Residency(default_load_s=5.0, backoff_base_s=2.0, backoff_max_s=5.0)
    assert residency.backoff("a", "m1", 0.0) is None
    residency.load_failed("a", "m1", "load failed: x", now_s=10.0)
    assert residency.backoff("a", "m1", 11.0) == Backoff(1, 12.0, "load failed: x")
    assert residency.backoff("a", "m1", 12.0) is None  # over: it may be asked again
    assert residency.backoff("b", "m1", 11.0) is None  # per instance
    residency.load_failed("a", "m1", "load failed: y", now_s=12.0)
    assert residency.backoff("a", "m1", 12.0) == Backoff(2, 16.0, "load failed: y")
    residency.load_failed("a", "m1", "load failed: z", now_s=16.0)
    assert residency.backoff("a", "m1", 16.0) == Backoff(3, 21.0, "load failed: z")  # capped
    residency.loaded("a", "m1", took_s=0.5)
    assert residency.backoff("a", "m1", 16.0) is None
    residency.load_failed("a", "m1", "again", now_s=30.0)
    assert residency.backoff("a", "m1", 30.0) == Backoff(1, 32.0, "again")  # from the base


def test_an_instance_that_refused_a_model_holds_it_again_after_a_newer_index() -> None:
    residency = Residency(default_load_s=5.0)
    instance = running("a", "http://127.0.0.1:1", ("m1",))
    began = residency.generation.get("a", 0)  # a read in flight when the refusal comes
    residency.refused("a", "m1")
    assert not residency.holds(instance, "m1", "m1")  # over the listing
    assert not residency.apply("a", frozenset({"m1"}), generation=began)
    assert not residency.holds(instance, "m1", "m1")
    assert residency.apply("a", frozenset({"m1"}), generation=residency.generation["a"])
    assert residency.holds(instance, "m1", "m1")
