"""The KServe v2 model repository extension on a real `mark worker` (Triton's and MLServer's
shapes): index, load, unload, pinning, and the cache in the server metadata and metrics."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from mark.adapters.http_pool import HttpPool
from mark.adapters.repository import read_index
from mark.core.protocol import LOAD_PIN_HEADER, UNLOAD_IDLE_HEADER
from tests.dataplane import workers
from tests.model_artifacts import index, infer, samples, write_model


async def test_index_load_unload_round_trip_and_pinning(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    size = write_model(store, "m1", 1.0).stat().st_size
    write_model(store, "m2", 2.0)
    config = tmp_path / "worker.toml"
    # the pinned builtin (2,704 bytes of weights) plus one stored model fit, not two
    config.write_text(f"[worker]\nmemory_budget_bytes = {2704 + size + size // 2}\n")
    args = ["--model", "demo=builtin:mlp", "--store", str(store), "--config", str(config),
            "--protect-s", "0", "--poll-s", "0"]  # fmt: skip
    async with workers(args) as [w], aiohttp.ClientSession() as s:
        idx = await index(s, w.endpoint)
        assert idx == {
            "demo": {"name": "demo", "version": "1", "state": "READY", "reason": ""},
            "m1": {"name": "m1", "state": "UNAVAILABLE", "reason": "not loaded"},
            "m2": {"name": "m2", "state": "UNAVAILABLE", "reason": "not loaded"},
        }
        async with s.get(f"{w.endpoint}/v2/models/m1/ready") as r:
            assert r.status == 200 and (await r.json())["ready"] is False
        async with s.get(f"{w.endpoint}/v2/models/nope/ready") as r:
            assert r.status == 404
        async with s.post(f"{w.endpoint}/v2/repository/models/m1/load") as r:
            assert r.status == 200 and await r.read() == b""
        async with s.get(f"{w.endpoint}/v2/models/m1/ready") as r:
            assert (await r.json())["ready"] is True
        assert set(await index(s, w.endpoint, ready=True)) == {"demo", "m1"}
        async with s.get(f"{w.endpoint}/v2") as r:
            meta = await r.json()
        assert "model_repository" in meta["extensions"]
        cache = meta["cache"]
        loaded = {m["name"]: m for m in cache["models"]}
        assert set(loaded) == {"demo", "m1"}
        assert loaded["m1"]["bytes"] == size and loaded["m1"]["pinned"] is True
        assert loaded["m1"]["load_seconds"] > 0 and loaded["m1"]["loads"] == 1
        assert loaded["demo"]["bytes"] == 2704
        assert cache["memory_used_bytes"] == 2704 + size
        assert cache["memory_budget_bytes"] == 2704 + size + size // 2

        # m1 is pinned by the API: with no protection window it still is not evicted for m2
        status, doc, headers = await infer(s, w.endpoint, "m2")
        assert status == 503 and "pinned" in doc["error"] and "Retry-After" in headers
        async with s.post(f"{w.endpoint}/v2/repository/models/m1/unload") as r:
            assert r.status == 200 and await r.read() == b""
        idx = await index(s, w.endpoint)
        assert idx["m1"] == {"name": "m1", "state": "UNAVAILABLE", "reason": "unloaded"}
        status, doc, _ = await infer(s, w.endpoint, "m2")
        assert status == 200 and doc["model_version"] == "1"
        m = await samples(s, w.endpoint)
        assert m[("mark_worker_model_evictions_total", "model=m1,reason=unload,tier=memory")] == 1
        assert m[("mark_worker_model_resident_bytes", "model=m2")] == size
        assert m[("mark_worker_model_resident_bytes", "model=m1")] == 0
        assert m[("mark_worker_cache_requests_total", "model=m2,result=refused")] == 1
        assert m[("mark_worker_cache_requests_total", "model=m2,result=miss")] == 1

        # unloaded, unpinned: a request loads it back lazily, evicting the idle m2
        status, doc, _ = await infer(s, w.endpoint, "m1")
        assert status == 200 and doc["model_version"] == "1"  # the same artifact
        assert (await index(s, w.endpoint))["m2"]["state"] == "UNAVAILABLE"

        for path, status in [("/v2/repository/models/nope/load", 404),
                             ("/v2/repository/models/nope/unload", 404)]:  # fmt: skip
            async with s.post(f"{w.endpoint}{path}") as r:
                assert r.status == status and "unknown model" in (await r.json())["error"]
        async with s.post(f"{w.endpoint}/v2/repository/index", data=b"[1]") as r:
            assert r.status == 400 and "error" in await r.json()


async def test_a_load_marked_unpinned_stays_evictable(tmp_path: Path) -> None:
    """`Mark-Load-Pin: false` (the front end's loads): loaded, not pinned, so a later request
    for another model evicts it once idle instead of being refused."""
    store = tmp_path / "store"
    store.mkdir()
    size = write_model(store, "m1", 1.0).stat().st_size
    write_model(store, "m2", 2.0)
    config = tmp_path / "worker.toml"
    config.write_text(f"[worker]\nmemory_budget_bytes = {size + size // 2}\n")  # one fits
    args = ["--store", str(store), "--config", str(config), "--protect-s", "0", "--poll-s", "0"]
    async with workers(args) as [w], aiohttp.ClientSession() as s:
        load = f"{w.endpoint}/v2/repository/models/m1/load"
        async with s.post(load, headers={LOAD_PIN_HEADER: "false"}) as r:
            assert r.status == 200
        async with s.get(f"{w.endpoint}/v2") as r:
            [m1] = (await r.json())["cache"]["models"]
        assert m1["name"] == "m1" and m1["pinned"] is False
        status, _, _ = await infer(s, w.endpoint, "m2")
        assert status == 200
        idx = await index(s, w.endpoint)
        assert idx["m1"]["state"] == "UNAVAILABLE" and idx["m2"]["state"] == "READY"


async def test_an_idle_unload_keeps_a_model_in_use_or_pinned(tmp_path: Path) -> None:
    """`Mark-Unload-Idle-S: N` (the front end's idle unloads): 409 for a model pinned or used
    in the last N seconds, 200 once it has been idle that long; a bad value is a 400."""
    store = tmp_path / "store"
    store.mkdir()
    write_model(store, "m1", 1.0)
    write_model(store, "m2", 2.0)
    args = ["--store", str(store), "--protect-s", "0", "--poll-s", "0"]
    async with workers(args) as [w], aiohttp.ClientSession() as s:
        async with s.post(f"{w.endpoint}/v2/repository/models/m1/load") as r:
            assert r.status == 200  # pinned
        assert (await infer(s, w.endpoint, "m2"))[0] == 200  # loaded by a request, unpinned

        async def unload(name: str, idle: str) -> tuple[int, str]:
            url = f"{w.endpoint}/v2/repository/models/{name}/unload"
            async with s.post(url, headers={UNLOAD_IDLE_HEADER: idle}) as r:
                return r.status, (await r.json())["error"] if r.status != 200 else ""

        status, error = await unload("m1", "0")
        assert status == 409 and "pinned" in error
        status, error = await unload("m2", "60")
        assert status == 409 and "used" in error and "not idle for 60 s" in error
        assert (await unload("m2", "soon"))[0] == 400
        assert await unload("m2", "0") == (200, "")
        idx = await index(s, w.endpoint)
        assert idx["m1"]["state"] == "READY" and idx["m2"]["state"] == "UNAVAILABLE"


async def test_an_unchanged_index_is_answered_304_and_read_as_the_last(tmp_path: Path) -> None:
    """The front end's conditional index read (mark/core/protocol/repository.py): while the
    worker's READY set is as last read the worker answers 304 and the read is the last one;
    after a load the index is read anew, with its new tag."""
    store = tmp_path / "store"
    store.mkdir()
    write_model(store, "m1", 1.0)
    args = ["--model", "demo=builtin:mlp", "--store", str(store), "--poll-s", "0"]
    http = HttpPool(limit=4, timeout_s=5.0)
    async with workers(args) as [w], aiohttp.ClientSession() as s:
        try:
            first = await read_index(http, w.endpoint, 5.0)
            assert first is not None and first.ready == {"demo"}
            again = await read_index(http, w.endpoint, 5.0, last=first)
            assert again is first
            answer = await http.post(
                w.endpoint, "/v2/repository/index", b'{"ready": true}',
                headers=b"If-None-Match: %b\r\n" % first.etag.encode(),
            )  # fmt: skip
            assert (answer.status, answer.body) == (304, b"")
            async with s.post(f"{w.endpoint}/v2/repository/models/m1/load") as r:
                assert r.status == 200
            loaded = await read_index(http, w.endpoint, 5.0, last=first)
            assert loaded is not None and loaded.ready == {"demo", "m1"}
            assert loaded.etag != first.etag
            async with s.post(f"{w.endpoint}/v2/repository/index", json={"ready": True}) as r:
                assert r.status == 200 and r.headers["ETag"] == loaded.etag  # a plain read
        finally:
            await http.close()
