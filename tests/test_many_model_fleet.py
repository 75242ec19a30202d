"""A many-model fleet end to end (issue 19, "Done when"): real `mark worker` processes started by
the local cloud with a `[worker]` section (a store, a memory budget of ten models each), models
registered in bulk from the store through the admin API of a real front end, which routes by
residency over HTTP and spills to the real local function pool. The control loop is not run:
the test records the local cloud's instances in the database as the loop would.

The Zipf test sends a bounded Poisson stream, Zipf(1.1) over 50 models, and checks what the
issue asks: no request fails, the popular models are never evicted, the cache's hits, misses
and evictions show in the workers' and the front end's `/metrics`, the popular models meet
their SLO, and every request of the cold tail is accounted for by the path that served it (an
instance, after a load where it was resident nowhere, or the serverless pool).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from sanic import Sanic

from mark.adapters.db import Database
from mark.core.config import Config, load_config
from mark.core.types import Instance
from provisioner.adapters.local_cloud import LocalCloud
from provisioner.adapters.serverless import InvokeServer, LocalFunctionPool
from tests.conftest import free_port
from tests.dataplane import front_end, offering
from tests.model_artifacts import body, expected, index, onnx_bytes, samples, write_model

TOKEN = "many-model-token"
SLO = {"latency_ms": 2000.0, "percentile": 0.98}
PROFILE = {"instance_type": "c5.large", "latency_ms": {"1": 2.5, "8": 6.0}, "max_batch": 8}
N_MODELS = 50
PER_WORKER = 10  # models a worker's memory budget holds
N_WORKERS = 3
POPULAR = 5  # the most requested models (46% of the traffic): never to be evicted
PROTECT_S = 6.0  # the workers' eviction protection


@dataclass
class ManyFleet:
    """A front end at `url` over the local cloud's workers; `scales[m]` is model m's weights'
    scale (its answers are `expected(scale)`)."""

    url: str
    app: Sanic
    cloud: LocalCloud
    instances: list[Instance]
    scales: dict[str, float]
    store: Path
    budget_bytes: int

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}


def _config(tmp_path: Path, store: Path, budget: int, spill: bool) -> Config:
    return load_config(
        environ={},
        spill={"enabled": spill},
        server={"port": free_port(), "admin_token": TOKEN},
        database={"url": f"sqlite+aiosqlite:///{tmp_path / 'mark.db'}"},
        cloud={"launch_overhead_scale": 0.0, "local_state_dir": str(tmp_path / "cloud")},
        serverless={"local_port": free_port(), "concurrency": 6, "memory_mb": 1024},
        batching={"sync_interval_s": 0.1, "default_load_s": 0.5, "health_interval_s": 0.5},
        worker={
            "store": str(store),
            "memory_budget_bytes": budget,
            "protect_s": PROTECT_S,
            "poll_s": 0.0,
        },  # fmt: skip
    )


@contextlib.asynccontextmanager
async def many_model_fleet(
    tmp_path: Path,
    names: Sequence[str],
    *,
    workers: int,
    extra: dict[str, bytes] | None = None,
    spill: bool = True,
) -> AsyncIterator[ManyFleet]:
    """`names` in a local store (m-th model's weights scaled by its place + 1) and `extra`
    files beside them, registered in bulk from the store; `workers` instances launched by the
    local cloud with every registered model, recorded in the database, the front end synced
    (spilling to the local pool unless `spill` is False)."""
    store = tmp_path / "store"
    store.mkdir()
    scales = {name: float(i + 1) for i, name in enumerate(names)}
    sizes = [write_model(store, name, scale).stat().st_size for name, scale in scales.items()]
    for filename, data in (extra or {}).items():
        (store / filename).write_bytes(data)
    budget = PER_WORKER * max(sizes) + max(sizes) // 2
    config = _config(tmp_path, store, budget, spill)
    pool = LocalFunctionPool(config.serverless)  # the control plane's, in `mark serve`
    invoke = InvokeServer(pool)
    await invoke.start()
    db = await Database.open(config.database.url)
    cloud = LocalCloud(config.cloud, models=db.get_model, worker=config.worker)
    try:
        async with front_end(config) as app, aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{config.server.port}"
            fleet = ManyFleet(url, app, cloud, [], scales, store, budget)
            # a declared footprint makes each a many-model tenant: known, loaded on demand
            template = {"slo": SLO, "profiles": {"c5.large": PROFILE}, "max_batch": 8,
                        "memory_mb": max(sizes) / 2**20}  # fmt: skip
            async with s.post(
                f"{url}/admin/v1/models:bulk",
                headers=fleet.auth,
                json={"store": {"prefix": ""}, "template": template},
            ) as r:
                assert r.status == 201, await r.text()  # fmt: skip
            registered = [m.name for m in await db.list_models()]
            launched = [await cloud.launch(offering(), registered) for _ in range(workers)]
            for pending in launched:
                fleet.instances.append(await cloud.wait_running(pending.id, 60))
                await db.save_instance(fleet.instances[-1])  # as the control loop records it
            async with asyncio.timeout(20):
                while not all(len(app.ctx.fleet.routable(n)) == workers for n in registered):
                    await asyncio.sleep(0.05)
            yield fleet
    finally:
        await cloud.close()
        await db.close()
        await invoke.close()
        await pool.close()


def _zipf_ranks(count: int, seed: int) -> np.ndarray:
    """`count` model ranks (0: most popular), Zipf(1.1) over N_MODELS."""
    weights = np.arange(1, N_MODELS + 1, dtype=float) ** -1.1
    return np.random.default_rng(seed).choice(N_MODELS, size=count, p=weights / weights.sum())


def _total(m: dict[tuple[str, str], float], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    want = [f"{k}={v}" for k, v in labels.items()]
    return sum(
        v for (n, lab), v in m.items() if n == name and all(w in lab.split(",") for w in want)
    )


def _by_model(m: dict[tuple[str, str], float], name: str, **labels: str) -> Counter[str]:
    out: Counter[str] = Counter()
    want = [f"{k}={v}" for k, v in labels.items()]
    for (n, lab), v in m.items():
        parts = lab.split(",")
        if n == name and all(w in parts for w in want):
            model = next(p.removeprefix("model=") for p in parts if p.startswith("model="))
            out[model] += v
    return out


def _delta(after: Counter[str], before: Counter[str]) -> Counter[str]:
    return Counter({k: after[k] - before.get(k, 0.0) for k in after})


async def test_zipf_load_over_fifty_models_on_three_workers_of_ten(tmp_path: Path) -> None:
    names = [f"m{i:02d}" for i in range(N_MODELS)]
    requests, rate_rps = 1200, 40.0  # about 30 s
    async with many_model_fleet(tmp_path, names, workers=N_WORKERS) as fleet:
        endpoints = [i.endpoint for i in fleet.instances if i.endpoint is not None]
        connector = aiohttp.TCPConnector(limit=256)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as s:
            front_before = await samples(s, fleet.url)
            ranks = _zipf_ranks(requests, seed=1911)
            gaps = np.random.default_rng(1912).exponential(1.0 / rate_rps, size=requests)
            results: list[tuple[str, int, float, Any]] = []

            async def one(name: str) -> None:
                started = time.perf_counter()
                async with s.post(f"{fleet.url}/v2/models/{name}/infer", json=body()) as r:
                    doc = await r.json()
                    results.append((name, r.status, time.perf_counter() - started, doc))

            tasks = []
            began = time.perf_counter()
            for rank, gap in zip(ranks, gaps, strict=True):
                await asyncio.sleep(gap)
                tasks.append(asyncio.create_task(one(names[rank])))
            await asyncio.gather(*tasks)
            took_s = time.perf_counter() - began
            await asyncio.sleep(0.5)  # the front end's buffered metrics: flushed every 0.25 s
            front = await samples(s, fleet.url)
            workers = [await samples(s, e) for e in endpoints]
            pids = [fleet.cloud.pid(i.id) for i in fleet.instances]
            alive = [pid is not None and os.path.exists(f"/proc/{pid}") for pid in pids]

    # no request fails, and each got its own model's answer
    statuses = Counter(status for _, status, _, _ in results)
    assert statuses == {200: requests}, [(n, st, d) for n, st, _, d in results if st != 200][:5]
    for name, _, _, doc in results:
        np.testing.assert_allclose(
            doc["outputs"][0]["data"], expected(fleet.scales[name])[0], rtol=1e-5
        )
    assert all(alive)  # no worker fell over

    # the cache in the workers' /metrics: hits, misses (loads), evictions, within the budget
    hits = sum(_total(w, "mark_worker_cache_requests_total", result="hit") for w in workers)
    loads = sum(_total(w, "mark_worker_model_loads_total") for w in workers)
    evicted: Counter[str] = Counter()
    for w in workers:
        evicted.update(_by_model(w, "mark_worker_model_evictions_total", tier="memory"))
        used, budget = (
            w[("mark_worker_memory_used_bytes", "")],
            w[("mark_worker_memory_budget_bytes", "")],
        )
        assert 0 < used <= budget
    assert hits > 0 and loads > N_WORKERS * PER_WORKER / 2
    assert sum(evicted.values()) > 0, "the tail never rotated: no eviction to see"

    # the popular models are never evicted: loaded once each, by the front end, and kept
    popular = names[:POPULAR]
    assert all(evicted[m] == 0 for m in popular), {m: evicted[m] for m in popular}
    fe_loads = _delta(
        _by_model(front, "mark_frontend_model_loads_total", outcome="ok"),
        _by_model(front_before, "mark_frontend_model_loads_total", outcome="ok"),
    )
    assert all(fe_loads[m] == 1 for m in popular), {m: fe_loads[m] for m in popular}

    # the SLO met for the popular models, as the front end counts it
    met = _delta(_by_model(front, "mark_inference_slo_total", met="true"),
                 _by_model(front_before, "mark_inference_slo_total", met="true"))  # fmt: skip
    sent = Counter(name for name, _, _, _ in results)
    for m in popular:
        assert met[m] / sent[m] >= SLO["percentile"], (m, met[m], sent[m])

    # every request accounted by the path that answered it; the cold tail by load or spill
    def answered(path: str) -> Counter[str]:
        after = _by_model(front, "mark_inference_requests_total", path=path, code="200")
        return _delta(after, _by_model(front_before, "mark_inference_requests_total",
                                       path=path, code="200"))  # fmt: skip

    by_instance, by_pool = answered("instance"), answered("serverless")
    assert all(by_instance[m] + by_pool[m] == sent[m] for m in sent), (by_instance, by_pool, sent)
    spilled = _delta(
        _by_model(front, "mark_spill_total"), _by_model(front_before, "mark_spill_total")
    )
    assert sum(spilled.values()) == sum(by_pool.values())
    reasons = {
        r: _total(front, "mark_spill_total", reason=r)
        - _total(front_before, "mark_spill_total", reason=r)
        for r in ("deadline", "overload", "cold-fleet", "draining")
    }
    tail = [m for m in names[POPULAR:] if sent[m]]
    tail_loads = sum(fe_loads[m] for m in tail)
    assert tail_loads > 0
    for m in tail:  # a tail model served by an instance was loaded there first
        assert by_instance[m] == 0 or fe_loads[m] >= 1, m
    latencies = sorted(lat for name, _, lat, _ in results if name in popular)
    print(
        f"\n{requests} requests in {took_s:.1f} s ({requests / took_s:.0f}/s) over "
        f"{len(sent)} models, 0 failed; popular p50 {latencies[len(latencies) // 2] * 1e3:.1f} "
        f"ms, p98 {latencies[int(len(latencies) * 0.98)] * 1e3:.1f} ms; worker cache hits "
        f"{hits:.0f}, loads {loads:.0f}, memory evictions {sum(evicted.values()):.0f} (popular "
        f"0); front-end loads {sum(fe_loads.values()):.0f} ({tail_loads:.0f} for the tail); "
        f"tail answered: instance {sum(by_instance[m] for m in tail):.0f}, serverless "
        f"{sum(by_pool[m] for m in tail):.0f} (spills by reason {reasons})"
    )


async def test_bad_input_unknown_404_broken_artifacts_503_and_oversize_refused_422(
    tmp_path: Path,
) -> None:
    """Through the front end over a worker the local cloud started: an unknown model is a 404;
    a model whose artifact is corrupt, or was deleted after registration, a 503 with the
    worker's reason and Retry-After (its metadata a 503 with the artifact's), and the worker
    stays up serving the others; an artifact larger than a worker's memory budget is refused
    at registration with 422, named alone or in a bulk registration from the store."""
    extra = {"corrupt.onnx": b"not an onnx graph", "gone.onnx": onnx_bytes(3.0)}
    async with many_model_fleet(tmp_path, ["good"], workers=1, extra=extra, spill=False) as fleet:
        (fleet.store / "gone.onnx").unlink()
        [instance] = fleet.instances
        assert instance.endpoint is not None
        async with aiohttp.ClientSession(headers=fleet.auth) as s:

            async def infer(name: str) -> tuple[int, dict[str, Any], Any]:
                async with s.post(f"{fleet.url}/v2/models/{name}/infer", json=body()) as r:
                    return r.status, await r.json(), r.headers

            status, doc, _ = await infer("nope")
            assert status == 404 and "unknown model" in doc["error"]
            for name, why in (("corrupt", "load failed"), ("gone", "artifact missing")):
                for _ in range(2):  # the second finds the worker backing off: the same reason
                    status, doc, headers = await infer(name)
                    assert status == 503 and why in doc["error"], doc
                    assert int(headers["Retry-After"]) >= 1
                async with s.get(f"{fleet.url}/v2/models/{name}") as r:
                    assert r.status == 503, await r.text()
                    assert "artifact" in (await r.json())["error"]
            status, doc, _ = await infer("good")
            assert status == 200, doc
            np.testing.assert_allclose(doc["outputs"][0]["data"], expected(1.0)[0], rtol=1e-5)
            idx = await index(s, instance.endpoint)
            assert (
                idx["corrupt"]["state"] == "UNAVAILABLE"
                and "load failed" in idx["corrupt"]["reason"]
            )
            assert "artifact missing" in idx["gone"]["reason"]
            assert idx["good"]["state"] == "READY"
            pid = fleet.cloud.pid(instance.id)
            assert pid is not None and os.path.exists(f"/proc/{pid}")
            assert fleet.app.ctx.fleet.routable("good") == [instance.id]  # not ejected

            huge = write_model(tmp_path, "huge", 1.0, features=4096)
            assert huge.stat().st_size > fleet.budget_bytes
            spec = {"slo": SLO, "profiles": {"c5.large": PROFILE}}
            one = {"name": "huge", **spec, "backend": {"artifact": f"onnx:{huge}"}}
            async with s.post(f"{fleet.url}/admin/v1/models", json=one) as r:
                refused = await r.json()
                assert r.status == 422 and refused["field"] == "backend.artifact", refused
                assert "whole memory budget" in refused["error"]
            huge.replace(fleet.store / "huge.onnx")
            bulk = {"store": {"prefix": "huge"}, "template": spec}
            async with s.post(f"{fleet.url}/admin/v1/models:bulk", json=bulk) as r:
                refused = await r.json()
                assert r.status == 422, refused
                assert [d["field"] for d in refused["details"]] == ["store.huge.backend.artifact"]
            async with s.get(f"{fleet.url}/admin/v1/models/huge") as r:
                assert r.status == 404  # nothing registered
