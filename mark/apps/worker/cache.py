"""`mark worker`'s many-model cache: memory, then local disk, then the store (issue 19).

Cortex's two tiers, with what its users asked for on top. A model loads into memory on its
first request (or a repository `load`), fetched from the store into the disk tier first; when
the memory budget is short, the least recently used models leave memory (their artifact stays in
the disk tier, so coming back costs a load but no download) and when the disk budget is short the
least recently used artifacts are deleted, those of models still in memory last.

Eviction protection (roboflow/inference #2448: models in active rotation reloaded hundreds of
times an hour): a model that served a request in the last `protect_s`, that has a request in
flight, or that is pinned (a `--model` preload, a repository `load` unless it asked not to be:
the front end's loads, frontend/residency.py) is never evicted. When a load
fits only by evicting such a model it is refused, 503 with Retry-After (the seconds until the
first protection lapses), so the front end can send the request elsewhere or spill it, rather
than the worker trading a hot model for a cold one.

One load per model: concurrent requests for a model being loaded await the same task. Loading
runs in a thread (the store's calls and the loaders block), so the other models keep serving.

Live reload: every `poll_s` the store is asked for the versions of the loaded models (one LIST on
S3, a stat per file locally); a changed artifact is fetched and loaded beside the old version,
then swapped in one step of the event loop. Requests already holding the old version finish on
it, and it is closed once the last one has. A version that failed to load is not tried again
until the artifact changes, and the old version keeps serving meanwhile.

Memory is charged as `ServedModel.size_bytes` (a lower bound: artifact bytes, see loaders.py); a
load reserves the stored artifact's size before it starts, so concurrent loads never overcommit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mark.adapters.artifacts import MISSING, spec_entry
from mark.adapters.model_store import ModelStore, SpecObjects, StoredModel, object_artifact
from mark.apps.worker import metrics
from mark.apps.worker.loaders import ServedModel, load_model
from mark.apps.worker.runner import ModelRunner
from mark.core.config import WorkerConfig
from mark.core.errors import MarkError, NotFound

__all__ = ["ModelCache", "ModelUnavailable", "NoRoom", "ModelInUse", "ModelTooLarge", "READY",
           "LOADING", "UNAVAILABLE"]  # fmt: skip

log = logging.getLogger(__name__)
READY, LOADING, UNAVAILABLE = "READY", "LOADING", "UNAVAILABLE"  # the repository index states
_BUILTIN = "builtin"
_SUFFIXES = {"onnx": ".onnx", "sklearn": ".joblib", "torchscript": ".pt"}

RunnerFactory = Callable[[ServedModel, str], ModelRunner]  # (model, version) -> its runner


class ModelUnavailable(MarkError):
    """The model cannot be served now (503): no room without evicting a protected model, or its
    artifact is missing or failed to load. `retry_after_s` is when trying again may succeed."""

    def __init__(self, reason: str, retry_after_s: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = max(1, math.ceil(retry_after_s))


class NoRoom(ModelUnavailable):
    """The model fits only by evicting a protected one (pinned, in flight, or used within
    `protect_s`): a matter of time, not a failed load, which the server tells the front end
    apart (`mark.core.protocol.REFUSED_HEADER`) so that it waits for room rather than fail."""


class ModelInUse(MarkError):
    """An unload that asked for an idle model found it in use: pinned, a request in flight,
    or one served within the idle time asked for (409)."""


class ModelTooLarge(MarkError):
    """The model is larger than the whole budget (422): no eviction can ever make room."""


def _seen(task: asyncio.Task[Any]) -> None:
    """Mark a shared task's error as retrieved: every request waiting on it may have gone."""
    if not task.cancelled():
        task.exception()


@dataclass(slots=True, eq=False)
class _Resident:
    """One loaded version in memory."""

    runner: ModelRunner
    stored: StoredModel
    size_bytes: int
    load_s: float
    loaded_at_unix_s: float
    inflight: int = 0
    retired: bool = False


@dataclass(slots=True, eq=False)
class _Entry:
    """Everything the worker knows of one model name."""

    name: str
    spec: str | None  # a --model artifact spec; None: the model comes from the store
    pinned: bool = False
    resident: _Resident | None = None
    loading: asyncio.Task[_Resident] | None = None
    reloading: bool = False
    disk: tuple[Path, StoredModel] | None = None  # the disk tier's copy
    reason: str = "not loaded"
    failed_version: str | None = None
    last_used_s: float = -math.inf
    loads: int = 0
    numbered: tuple[str, int] = ("", 0)  # the artifact version last loaded and its number

    def number(self, version: str) -> int:
        """The model version the answers report: a new number for each new artifact, the same
        for the same artifact loaded again (from disk after an eviction, say)."""
        token, number = self.numbered
        return number if token == version else number + 1


@dataclass(slots=True)
class ModelCache:
    """The models of one worker. `fixed` are the `--model` specs (name -> artifact), loaded and
    pinned by `start`; `on_demand` (`--lazy-model`) are known by their specs but load on
    demand and are evicted like stored models; the others come from `store` on demand. A spec
    whose file is an S3 object (`onnx:s3://bucket/key`) is fetched into the disk tier through
    boto3 (`settings.store_endpoint_url`), versioned by its ETag like a stored model."""

    settings: WorkerConfig
    store: ModelStore | None
    fixed: Mapping[str, str]
    cache_dir: Path
    make_runner: RunnerFactory
    clock: Callable[[], float] = time.monotonic
    on_demand: Mapping[str, str] = field(default_factory=dict)
    _entries: dict[str, _Entry] = field(default_factory=dict)
    _objects: SpecObjects | None = None  # the S3 objects specs name (settings' endpoint)
    _draining: set[_Resident] = field(default_factory=set)
    _reserved_bytes: int = 0
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _discovering: dict[str, asyncio.Task[_Entry]] = field(default_factory=dict)
    _poller: asyncio.Task[None] | None = None

    # lifecycle

    async def start(self) -> None:
        """Load and pin the `--model` models (an error here is a start-up error), then poll."""
        metrics.MEMORY_BUDGET.set(self.settings.memory_budget_bytes or 0)
        for name, spec in self.on_demand.items():
            object_artifact(spec)  # a malformed object URL is a start-up error
            self._entries[name] = _Entry(name, spec)
        for name, spec in self.fixed.items():
            entry = self._entries[name] = _Entry(name, spec, pinned=True)
            await self._ensure(entry, raw_errors=True)
        if self.settings.poll_s > 0:
            self._poller = asyncio.create_task(self._poll_forever())

    async def close(self) -> None:
        pending = [t for t in (self._poller, *self._tasks) if t is not None]
        pending += [e.loading for e in self._entries.values() if e.loading is not None]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        residents = [e.resident for e in self._entries.values() if e.resident is not None]
        await asyncio.gather(*(r.runner.close() for r in (*residents, *self._draining)))

    # serving

    @contextlib.asynccontextmanager
    async def serving(self, name: str) -> AsyncIterator[ModelRunner]:
        """The model's current runner, loaded first on a miss. Raises NotFound, ModelTooLarge or
        ModelUnavailable. The version held stays open until the caller is done with it."""
        entry = self._entries.get(name) or await self._discover(name)
        resident = entry.resident
        if resident is None:
            try:
                resident = await self._ensure(entry)
            except (ModelUnavailable, ModelTooLarge):
                metrics.CACHE_REQUESTS.labels(name, "refused").inc()
                raise
            metrics.CACHE_REQUESTS.labels(name, "miss").inc()
        else:
            metrics.CACHE_REQUESTS.labels(name, "hit").inc()
        resident.inflight += 1
        entry.last_used_s = self.clock()
        try:
            yield resident.runner
        finally:
            resident.inflight -= 1
            entry.last_used_s = self.clock()
            if resident.retired and resident.inflight == 0:
                self._close_later(resident)

    async def ready(self, name: str) -> bool:
        """Whether `name` is in memory now (NotFound for a model the worker cannot load)."""
        entry = self._entries.get(name) or await self._discover(name)
        return entry.resident is not None

    def runner(self, name: str) -> ModelRunner | None:
        """The loaded runner of `name`, without loading or counting a use."""
        entry = self._entries.get(name)
        return entry.resident.runner if entry and entry.resident else None

    # the repository extension

    async def load(self, name: str, *, pin: bool = True) -> None:
        """Load (or reload, if its artifact changed) and pin `name` until `unload`; with
        `pin=False` it is not pinned but counts as just used (protected for `protect_s`, then
        evicted like any other: the front end loads a model for the requests it holds, and a
        pin that outlived them would keep every later load out once memory is full)."""
        entry = self._entries.get(name) or await self._discover(name)
        if entry.resident is not None:
            stored = await self._stat(entry)
            if stored.version != entry.resident.stored.version:
                await self._reload(entry, stored, propagate=True)
        else:
            await self._ensure(entry)
        entry.pinned = entry.pinned or pin
        entry.last_used_s = self.clock()

    async def unload(self, name: str, *, idle_s: float | None = None) -> None:
        """Unpin `name` and move it out of memory (its artifact stays in the disk tier). A later
        request loads it again, as for any stored model. With `idle_s` only a model idle that
        long, unpinned and with no request in flight (raises ModelInUse otherwise)."""
        entry = self._entries.get(name) or await self._discover(name)
        if idle_s is not None:
            busy = entry.loading is not None or (entry.resident and entry.resident.inflight > 0)
            ago_s = self.clock() - entry.last_used_s
            if entry.pinned or busy or ago_s < idle_s:
                why = "pinned" if entry.pinned else "in use" if busy else f"used {ago_s:.3g} s ago"
                raise ModelInUse(f"model {name!r} is {why}, not idle for {idle_s:g} s")
        entry.pinned = False
        if entry.loading is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(entry.loading)
        if entry.resident is not None:
            self._evict(entry, "unload")
            entry.reason = "unloaded"

    async def index(self, *, ready_only: bool = False) -> list[dict[str, str]]:
        """Triton's and MLServer's `$repository_index_response`: every model the worker could
        load, with its state and the reason for it. With `ready_only` the store is not listed
        (a model known only to the store is never READY): the front end reads that index on
        every fleet sync (frontend/residency.py), and on S3 a listing is a paid LIST call."""
        names = set(self._entries)
        if self.store is not None and not ready_only:
            try:
                names |= {m.name for m in await asyncio.to_thread(self.store.list)}
            except Exception:  # the store is unreachable: the models known here still list
                log.warning("model store %s could not be listed", self.store.url, exc_info=True)
        out = []
        for name in sorted(names):
            entry = self._entries.get(name)
            if entry is None:
                item = {"name": name, "state": UNAVAILABLE, "reason": "not loaded"}
            elif entry.resident is not None:
                item = {"name": name, "version": entry.resident.runner.version, "state": READY}
                item["reason"] = entry.reason if entry.failed_version else ""
            elif entry.loading is not None:
                item = {"name": name, "state": LOADING, "reason": "loading"}
            else:
                item = {"name": name, "state": UNAVAILABLE, "reason": entry.reason}
            if not ready_only or item["state"] == READY:
                out.append(item)
        return out

    def describe(self) -> dict[str, Any]:
        """The cache for the server metadata (`GET /v2`): budgets, use and each loaded model's
        bytes and load time, so a router can learn residency and headroom from one call."""
        now = self.clock()
        models = []
        for entry in sorted(self._entries.values(), key=lambda e: e.name):
            r = entry.resident
            if r is None:
                continue
            models.append(
                {
                    "name": entry.name,
                    "version": r.runner.version,
                    "bytes": r.size_bytes,
                    "load_seconds": round(r.load_s, 6),
                    "loaded_at": r.loaded_at_unix_s,
                    "loads": entry.loads,
                    "pinned": entry.pinned,
                    "protected": entry.pinned or self._protected(entry, now),
                    "inflight": r.inflight,
                }
            )
        return {
            "store": self.store.url if self.store is not None else None,
            "memory_budget_bytes": self.settings.memory_budget_bytes,
            "memory_used_bytes": self._used_bytes(),
            "disk_budget_bytes": self.settings.disk_budget_bytes,
            "disk_used_bytes": self._disk_bytes(),
            "protect_s": self.settings.protect_s,
            "poll_s": self.settings.poll_s,
            "models": models,
        }

    # finding models

    async def _discover(self, name: str) -> _Entry:
        """The entry of a stored model seen for the first time; concurrent first requests share
        one look-up, so a burst for a cold model costs the store one call, not one each."""
        if self.store is None:
            raise NotFound(f"unknown model {name!r}")
        task = self._discovering.get(name)
        if task is None:
            task = self._discovering[name] = asyncio.create_task(self._look_up(name))
            task.add_done_callback(_seen)
            task.add_done_callback(lambda _: self._discovering.pop(name, None))
        return await asyncio.shield(task)

    async def _look_up(self, name: str) -> _Entry:
        assert self.store is not None
        try:
            await self._store_call(self.store.stat, name)
        except NotFound as exc:
            raise NotFound(f"unknown model {name!r} (not in the store {self.store.url})") from exc
        return self._entries.setdefault(name, _Entry(name, None))

    async def _store_call(self, call: Callable[[str], StoredModel], name: str) -> StoredModel:
        """A store call in a thread; a failure other than NotFound (network, permissions) is
        the model's unavailability, answered 503 with its reason, not an error of the worker."""
        try:
            return await asyncio.to_thread(call, name)
        except NotFound:
            raise
        except Exception as exc:
            raise ModelUnavailable(f"model store unreachable: {exc}", self._retry_s()) from exc

    async def _stat(self, entry: _Entry) -> StoredModel:
        """The artifact's current entry: the store's, a spec's S3 object's, or a spec's file."""
        if entry.spec is None:
            assert self.store is not None
            return await self._store_call(self.store.stat, entry.name)
        remote = self._object(entry.spec)
        if remote is not None:
            bucket, kind, key = remote
            return await self._store_call(lambda name: bucket.head(name, kind, key), entry.name)
        return spec_entry(entry.name, entry.spec)

    def _object(self, spec: str) -> tuple[Any, str, str] | None:
        """(the S3Store of its bucket, kind, key) of a spec whose file is an S3 object, else
        None."""
        if self._objects is None:
            self._objects = SpecObjects(endpoint_url=self.settings.store_endpoint_url)
        return self._objects.find(spec)

    # loading

    async def _ensure(self, entry: _Entry, *, raw_errors: bool = False) -> _Resident:
        """The loaded version, joining the one load in progress or starting it."""
        if entry.resident is not None:
            return entry.resident
        if entry.loading is None:
            entry.loading = asyncio.create_task(self._load(entry, raw_errors))

            def done(task: asyncio.Task[_Resident]) -> None:
                entry.loading = None
                _seen(task)

            entry.loading.add_done_callback(done)
        return await asyncio.shield(entry.loading)

    async def _load(self, entry: _Entry, raw_errors: bool) -> _Resident:
        try:
            stored = await self._stat(entry)
        except NotFound as exc:
            entry.reason = f"artifact missing: {exc}"
            raise ModelUnavailable(entry.reason, self._retry_s()) from exc
        if stored.version == MISSING and stored.kind in _SUFFIXES:  # a spec file gone
            entry.reason = f"artifact missing: artifact file {stored.key} does not exist"
            raise ModelUnavailable(entry.reason, self._retry_s())
        if stored.version == entry.failed_version:
            raise ModelUnavailable(entry.reason, self._retry_s())
        resident = await self._build(entry, stored, raw_errors)
        entry.resident = resident
        entry.reason = ""
        self._update_gauges()
        return resident

    async def _reload(self, entry: _Entry, stored: StoredModel, *, propagate: bool) -> None:
        """Load `stored` beside the loaded version, then swap it in; the old version serves
        until the new one is ready, and after that only the requests that already held it."""
        entry.reloading = True
        try:
            new = await self._build(entry, stored, raw_errors=False)
        except (ModelUnavailable, ModelTooLarge):
            if propagate:
                raise
            return  # the reason is recorded; the old version keeps serving
        finally:
            entry.reloading = False
        if entry.resident is None:  # unloaded meanwhile: the unload wins
            self._retire(new)
            return
        old, entry.resident = entry.resident, new
        entry.reason = ""
        metrics.RELOADS.labels(entry.name).inc()
        if old is not None:
            self._retire(old)
        self._update_gauges()

    async def _build(self, entry: _Entry, stored: StoredModel, raw_errors: bool) -> _Resident:
        """Reserve memory, bring the artifact to local disk, load it in a thread. A fetch that
        fails (the store's I/O) is tried again by the next request; a load that fails (a corrupt
        artifact, no profile to pace it by) is recorded against the artifact's version, not tried
        again until the artifact changes. Both raise ModelUnavailable (a load failure as it is,
        with `raw_errors`, for a start-up error)."""
        started = self.clock()
        reserved = stored.size_bytes
        self._make_room(entry, reserved)
        self._reserved_bytes += reserved
        try:
            try:
                spec, source, stored = await self._local_spec(entry, stored)
            except ModelTooLarge:
                raise
            except Exception as exc:
                missing = isinstance(exc, NotFound)
                entry.reason = f"{'artifact missing' if missing else 'fetch failed'}: {exc}"
                raise ModelUnavailable(entry.reason, self._retry_s()) from exc
            try:
                model = await asyncio.to_thread(load_model, entry.name, spec)
                runner = self.make_runner(model, str(entry.number(stored.version)))
            except Exception as exc:
                entry.failed_version = stored.version
                entry.reason = f"load failed: {exc}"
                metrics.LOAD_FAILURES.labels(entry.name).inc()
                if raw_errors:
                    raise
                raise ModelUnavailable(entry.reason, self._retry_s()) from exc
        finally:
            self._reserved_bytes -= reserved
        size = max(stored.size_bytes, model.size_bytes)
        if size > reserved:  # the loader counted more than the artifact (builtin:mlp: 0 bytes)
            try:
                self._make_room(entry, size)
            except (ModelTooLarge, ModelUnavailable):
                await runner.close()
                raise
        entry.numbered = (stored.version, entry.number(stored.version))
        entry.loads += 1
        entry.failed_version = None
        load_s = self.clock() - started
        resident = _Resident(runner, stored, size, load_s, time.time())
        metrics.LOADS.labels(entry.name, source).inc()
        metrics.LOAD_SECONDS.labels(entry.name).observe(load_s)
        metrics.RESIDENT_BYTES.labels(entry.name).set(size)
        return resident

    async def _local_spec(self, entry: _Entry, stored: StoredModel) -> tuple[str, str, StoredModel]:
        """The loader spec of a local copy of `stored`, where it came from, and the version
        the copy holds. A store's artifact (or a spec's S3 object) is fetched into the disk tier
        unless already there."""
        remote = self._object(entry.spec) if entry.spec is not None else None
        if entry.spec is not None and remote is None:
            return entry.spec, ("file" if stored.kind != _BUILTIN else _BUILTIN), stored
        if entry.disk is not None and entry.disk[1].version == stored.version:
            return f"{stored.kind}:{entry.disk[0]}", "disk", stored
        source = remote[0] if remote is not None else self.store
        assert source is not None
        self._make_disk_room(entry, stored.size_bytes)
        number = entry.number(stored.version)
        dest = self.cache_dir / f"{entry.name}.v{number}{_SUFFIXES[stored.kind]}"
        fetched = await asyncio.to_thread(source.fetch, stored, dest)
        if entry.disk is not None and entry.disk[0] != dest:  # after a failed version: same name
            entry.disk[0].unlink(missing_ok=True)
        entry.disk = (dest, fetched)
        self._update_gauges()
        return f"{fetched.kind}:{dest}", "store", fetched

    # eviction

    def _protected(self, entry: _Entry, now_s: float) -> bool:
        recent = now_s - entry.last_used_s < self.settings.protect_s
        busy = entry.resident is not None and entry.resident.inflight > 0
        return recent or busy or entry.reloading

    def _make_room(self, entry: _Entry, need_bytes: int) -> None:
        """Evict least recently used, unprotected models until `need_bytes` fit, or raise."""
        budget = self.settings.memory_budget_bytes
        if budget is None:
            return
        if need_bytes > budget:
            entry.reason = f"{need_bytes} bytes is more than the whole budget of {budget}"
            raise ModelTooLarge(f"model {entry.name!r}: {entry.reason}")
        free = budget - self._used_bytes()
        if free >= need_bytes:
            return
        now = self.clock()
        others = [
            e
            for e in self._entries.values()
            if e.resident is not None and e is not entry and not e.pinned
        ]
        chosen: list[_Entry] = []
        for e in sorted(others, key=lambda e: e.last_used_s):
            if free >= need_bytes:
                break
            if not self._protected(e, now):
                chosen.append(e)
                free += e.resident.size_bytes if e.resident else 0
        if free < need_bytes:
            waits = [e.last_used_s + self.settings.protect_s - now for e in others]
            pinned = sorted(e.name for e in self._entries.values() if e.pinned and e.resident)
            active = sorted(e.name for e in others if e not in chosen)
            raise NoRoom(
                f"no room for {entry.name!r} ({need_bytes} bytes, {free} free at most) without "
                f"evicting a pinned model ({', '.join(pinned) or 'none'}) or one in active "
                f"rotation, used in the last {self.settings.protect_s:g} s "
                f"({', '.join(active) or 'none'})",
                min(waits, default=self.settings.protect_s),
            )
        for e in chosen:
            self._evict(e, "lru")

    def _evict(self, entry: _Entry, reason: str) -> None:
        resident, entry.resident = entry.resident, None
        if resident is None:
            return
        entry.reason = f"evicted from memory ({reason}), artifact kept on disk"
        metrics.EVICTIONS.labels(entry.name, "memory", reason).inc()
        metrics.RESIDENT_BYTES.labels(entry.name).set(0)
        self._retire(resident)

    def _make_disk_room(self, entry: _Entry, need_bytes: int) -> None:
        """Delete the least recently used disk copies (of models not in memory first) until
        `need_bytes` fit; a copy being loaded is never deleted."""
        budget = self.settings.disk_budget_bytes
        if need_bytes > budget:
            entry.reason = f"{need_bytes} bytes is more than the whole disk budget of {budget}"
            raise ModelTooLarge(f"model {entry.name!r}: {entry.reason}")
        free = budget - self._disk_bytes()
        others = [
            e
            for e in self._entries.values()
            if e.disk is not None and e is not entry and e.loading is None and not e.reloading
        ]
        for e in sorted(others, key=lambda e: (e.resident is not None, e.last_used_s)):
            if free >= need_bytes:
                break
            assert e.disk is not None
            free += e.disk[1].size_bytes
            e.disk[0].unlink(missing_ok=True)
            e.disk = None
            if e.resident is None:
                e.reason = "evicted from memory and disk (lru)"
            metrics.EVICTIONS.labels(e.name, "disk", "lru").inc()

    def _retire(self, resident: _Resident) -> None:
        resident.retired = True
        self._draining.add(resident)
        if resident.inflight == 0:
            self._close_later(resident)

    def _close_later(self, resident: _Resident) -> None:
        async def close() -> None:
            await resident.runner.close()
            self._draining.discard(resident)
            self._update_gauges()

        task = asyncio.create_task(close())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # live reload

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_s)
            try:
                await self.poll()
            except Exception:  # a poll that failed is retried at the next; serving goes on
                log.warning("polling the model store failed", exc_info=True)

    async def poll(self) -> None:
        """Reload every loaded model whose artifact changed since it was loaded."""
        loaded = [e for e in self._entries.values() if e.resident is not None and not e.reloading]
        current: dict[str, StoredModel] = {}
        if self.store is not None and any(e.spec is None for e in loaded):
            try:
                current = {m.name: m for m in await asyncio.to_thread(self.store.list)}
            except Exception as exc:  # the store is unreachable: keep serving what is loaded
                for e in loaded:
                    e.reason = f"store poll failed: {exc}"
        for e in loaded:
            if e.spec is not None:
                try:
                    current[e.name] = await self._stat(e)
                except (NotFound, ModelUnavailable) as exc:  # an S3 object: keep serving
                    e.reason = f"store poll failed: {exc}"
        metrics.STORE_POLLS.inc()
        for e in loaded:
            stored = current.get(e.name)
            if e.resident is None or stored is None:
                continue
            if stored.version not in (e.resident.stored.version, e.failed_version):
                await self._reload(e, stored, propagate=False)

    # accounting

    def _used_bytes(self) -> int:
        resident = sum(e.resident.size_bytes for e in self._entries.values() if e.resident)
        return resident + sum(r.size_bytes for r in self._draining) + self._reserved_bytes

    def _disk_bytes(self) -> int:
        return sum(e.disk[1].size_bytes for e in self._entries.values() if e.disk is not None)

    def _update_gauges(self) -> None:
        metrics.MEMORY_USED.set(self._used_bytes())
        metrics.DISK_USED.set(self._disk_bytes())

    def _retry_s(self) -> float:
        return self.settings.poll_s or self.settings.protect_s or 1.0
