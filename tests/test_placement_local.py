"""Many-model placement in the live control loop (mark/apps/control/placement_applier.py, issue
16 item 2 and its Done-when; issue 19 item 4) on the local cloud: real many-model `mark worker`
processes over one model store, the real repository API, an in-process front end (Fleet)
syncing from the database. The loop's clock is a test clock (the forecast buckets end when the
test says), the traffic is real.

Four models on two workers whose memory holds three each: one model's traffic jumps tenfold
under load and gets a replica on the other worker, loaded through the repository API before the
front end routes there, with no failed request; a model whose traffic stops is drained and
unloaded everywhere (scale to zero) and its next request is served by a load, which the ledger
charges to it as busy time.

Route groups (issue 19 item 5): four models in two groups by name, a worker per group; each
worker holds only its group's models, and every request, a scale-to-zero load included, is
served by its group's worker, though the other has room."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from prometheus_client import REGISTRY

from frontend import metrics
from frontend.fleet import Answer, Fleet
from mark.adapters.db import Database
from mark.apps.control.loop import ControlLoop, Schedule
from mark.core.config import BatchingConfig, Config
from mark.core.protocol import InferRequest, Tensor
from mark.core.types import ActionKind, Decision, InstanceState, Model
from provisioner.adapters.local_cloud import LocalCloud
from tests.dataplane import linear_profile, model
from tests.model_artifacts import expected, row, samples, write_model
from traces import Trace

pytestmark = pytest.mark.slow

SCALES = {"m1": 1.0, "m2": 2.0, "m3": 3.0, "m4": 4.0}
BUCKET_S = 5.0  # the forecast's bucket, in the loop's (test) clock
DRAIN_S = 2.0
BUSY = "mark_instance_busy_seconds_total"
FRONT_END_LOADS = "mark_frontend_model_loads_total"
MISSES = "mark_worker_cache_requests_total"
# T(b) = 30 + 30 b ms: about 29 rps at the SLO, so 2 rps is a tenth of an instance and 20 rps
# more than half of one (placement.replicate_above): two replicas
PROFILE = linear_profile("c5.large", 30.0, 30.0)


class _Clock:
    def __init__(self, now_s: float) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


@dataclass
class Plane:
    db: Database
    cloud: LocalCloud
    loop: ControlLoop
    fleet: Fleet
    clock: _Clock
    sent: dict[str, float] = field(default_factory=dict)
    answers: list[Answer | BaseException] = field(default_factory=list)

    async def traffic(
        self, per_model: Mapping[str, int], duration_s: float
    ) -> list[tuple[str, Answer | BaseException]]:
        """`per_model[m]` requests of each model, evenly over `duration_s` of real time (the
        front end's counts, as the control loop reads them); each model and its answer."""

        async def one(name: str, delay_s: float) -> Answer | BaseException:
            await asyncio.sleep(delay_s)
            self.sent[name] = self.sent.get(name, 0.0) + 1
            request = InferRequest((Tensor.of("input", np.asarray([row()], dtype=np.float32)),))
            try:
                return await self.fleet.infer(name, request)
            except Exception as exc:  # kept, to be reported: a failed request fails the test
                return exc

        calls = []
        for name, n in per_model.items():
            calls += [one(name, k * duration_s / n) for k in range(n)]
        names = [name for name, n in per_model.items() for _ in range(n)]
        results = await asyncio.gather(*calls)
        self.answers += results
        return list(zip(names, results, strict=True))

    async def tick(self) -> None:
        """The bucket ended: the control loop's tick, its loads done."""
        self.clock.now_s += BUCKET_S
        await self.loop.tick()
        await self.loop.placement.settled()

    async def sync(self, advance_s: float = 0.5) -> None:
        self.clock.now_s += advance_s
        await self.loop.sync()
        await self.loop.placement.settled()

    async def front_end_sync(self) -> None:
        """The front end's view brought up to date now (its own sync, every 0.05 s, may be a
        step behind the control loop's under load): instances from the database, then every
        instance's index."""
        self.fleet.set_instances(await self.db.list_instances(live_only=True))
        await self.fleet.refresh_residency()

    async def misses(self, name: str) -> float:
        """Requests of `name` a worker had to load it for, over every worker."""
        total = 0.0
        async with aiohttp.ClientSession() as s:
            for inst in await self.db.list_instances():
                if inst.endpoint is not None:
                    found = await samples(s, inst.endpoint)
                    total += found.get((MISSES, f"model={name},result=miss"), 0.0)
        return total

    async def held(self) -> dict[str, frozenset[str]]:
        """What each running worker's repository index says it holds."""
        out = {}
        async with aiohttp.ClientSession() as s:
            for inst in await self.db.list_instances():
                if inst.state != InstanceState.RUNNING or inst.endpoint is None:
                    continue
                async with s.post(f"{inst.endpoint}/v2/repository/index", json={}) as r:
                    doc = await r.json()
                out[inst.id] = frozenset(d["name"] for d in doc if d["state"] == "READY")
        return out


async def _until(what: str, check: object, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.05)


async def _decisions(db: Database) -> list[Decision]:
    decisions, _ = await db.list_decisions(limit=1000)
    return decisions


def _front_end_loads(name: str, instances: Iterable[str]) -> float:
    """Loads of `name` the front end asked for, on `instances`, whatever their outcome."""
    return sum(
        REGISTRY.get_sample_value(FRONT_END_LOADS, {"model": name, "instance": i, "outcome": o})
        or 0.0
        for i in instances
        for o in ("ok", "failed", "no-room")
    )


def _busy(instance_id: str, name: str) -> float:
    return REGISTRY.get_sample_value(BUSY, {"model": name, "instance": instance_id}) or 0.0


@contextlib.asynccontextmanager
async def _plane(
    tmp_path: Path,
    scales: Mapping[str, float],
    first_bucket: Mapping[str, float],
    **placement: object,
) -> AsyncIterator[Plane]:
    """The control plane over a store of `scales`' models, on workers whose memory holds three
    of them, with `first_bucket`'s requests known ahead (a schedule) and `placement` keys."""
    store = tmp_path / "store"
    store.mkdir()
    paths = {name: write_model(store, name, scale) for name, scale in scales.items()}
    size = max(p.stat().st_size for p in paths.values())
    config = Config.model_validate(
        {
            "cloud": {"zones": ["us-east-1a"], "launch_overhead_scale": 0.001},
            # placed at the last bucket's rate itself (no upper band): the test's own counts
            "forecast": {"predictor": "last", "bucket_s": BUCKET_S, "upper_band": False},
            "planner": {"spot": False, "horizon_s": BUCKET_S},
            "worker": {
                "store": str(store),
                "memory_budget_bytes": size * 7 // 2,  # three models fit, not four
                "protect_s": 0.0,
                "poll_s": 0.0,
            },
            "placement": {"unload_drain_s": DRAIN_S, **placement},
        }
    )
    models: list[Model] = []
    for name, path in paths.items():
        m = model(name, slo_ms=2000.0, profiles=[PROFILE], artifact=f"onnx:{path}")
        models.append(m.model_copy(update={"memory_mb": path.stat().st_size / 2**20}))
    db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'mark.db'}")
    for m in models:
        await db.create_model(m)
    cloud = LocalCloud(
        config.cloud, models=db.get_model, state_dir=tmp_path / "cloud", worker=config.worker
    )
    clock = _Clock(time.time())
    # Known demand for the first bucket (a schedule): the fleet is bought before traffic comes.
    names = tuple(sorted(first_bucket))
    start = np.full(len(names), clock.now_s)
    counts = np.array([first_bucket[n] for n in names])
    first = Trace(start, counts, BUCKET_S, names)
    fleet = Fleet(BatchingConfig(default_load_s=0.5))
    plane = Plane(db, cloud, None, fleet, clock)  # type: ignore[arg-type]

    def busy() -> dict[tuple[str, str], float]:  # what `plane.busy_seconds` reads
        metrics.flush()
        return {
            (s.labels["instance"], s.labels["model"]): s.value
            for family in REGISTRY.collect()
            if family.name == BUSY.removesuffix("_total")
            for s in family.samples
            if s.name == BUSY
        }

    plane.loop = ControlLoop(
        db,
        cloud,
        config,
        counts=lambda: dict(plane.sent),
        schedule=Schedule(first),
        clock=clock,
        busy=busy,
    )
    fleet.start_sync(db, 0.05)
    try:
        yield plane
    finally:
        await plane.loop.close()
        await fleet.close()
        await cloud.close()
        await db.close()


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[Plane]:
    async with _plane(tmp_path, SCALES, {"m1": 10.0, "m2": 5.0, "m3": 5.0, "m4": 5.0}) as p:
        yield p


async def test_placement_moves_under_load_with_no_failed_request_and_scales_to_zero(
    plane: Plane,
) -> None:
    db, fleet = plane.db, plane.fleet
    baseline = {"m1": 10, "m2": 5, "m3": 5, "m4": 5}  # per bucket: 2 rps, then 1 rps each

    # The first tick places the known demand: two workers (memory), models loaded once running.
    plane.clock.now_s -= BUCKET_S  # the tick below adds it back: the schedule's bucket
    await plane.tick()
    launched = await db.list_instances()
    assert len(launched) == 2 and all(i.placed_models for i in launched)
    for inst in launched:
        await plane.cloud.wait_running(inst.id, 60.0)
    await plane.sync()
    placed = {i.id: set(i.placed_models or ()) for i in await db.list_instances()}
    assert sorted(len(p) for p in placed.values()) == [1, 3]
    assert await plane.held() == {i: frozenset(p) for i, p in placed.items()}  # loaded, pinned
    for name in SCALES:
        await _until(f"{name} is routed", lambda n=name: fleet.resident(n))

    # A steady bucket: no move.
    await plane.traffic(baseline, BUCKET_S)
    await plane.tick()
    assert {i.id: set(i.placed_models or ()) for i in await db.list_instances()} == placed

    # m1 jumps tenfold: the bucket is served by one worker, the next tick adds a replica on the
    # other (a load through the repository API) while the traffic goes on.
    jump = {**baseline, "m1": 10 * baseline["m1"]}
    await plane.traffic(jump, BUCKET_S)
    during = asyncio.create_task(plane.traffic({"m1": jump["m1"]}, BUCKET_S))
    await plane.tick()
    holders = {i for i, held in (await plane.held()).items() if "m1" in held}
    assert len(holders) == 2, "m1 has no second replica"
    await _until("the front end routes m1 to both workers", lambda: len(fleet.resident("m1")) == 2)
    loads = [
        d
        for d in await _decisions(db)
        if d.action == ActionKind.LOAD and d.at_s == plane.clock.now_s
    ]
    assert [d.model for d in loads] == ["m1"] and loads[0].instance_id in holders
    # load before route: no request of m1 reached the new replica before its load (the
    # worker would have loaded it for the request: a cache miss)
    assert await plane.misses("m1") == 0

    # m4's traffic stops (m1 goes on at its new rate): at the tick it is placed nowhere, taken
    # off the front end's routes, then unloaded (scale to zero).
    await plane.traffic({"m2": baseline["m2"], "m3": baseline["m3"]}, BUCKET_S)
    served = await during
    assert {a.instance_id for _, a in served[-10:] if isinstance(a, Answer)} == holders
    await plane.tick()
    marked = [i for i in await db.list_instances() if "m4" in i.draining_models]
    assert len(marked) == 1
    await _until("the front end stops routing m4", lambda: not fleet.resident("m4"))
    await plane.sync(DRAIN_S)  # drained long enough: unloaded
    assert not any("m4" in held for held in (await plane.held()).values())
    await plane.sync()  # the index says it left: the mark is cleared
    assert not any(i.draining_models for i in await db.list_instances())
    unloads = [d for d in await _decisions(db) if d.action == ActionKind.UNLOAD]
    assert [(d.model, "scaled to zero" in d.reason) for d in unloads] == [("m4", True)]
    assert REGISTRY.get_sample_value("mark_placement_models", {"state": "zero"}) == 1

    # Its next request is served by a load (one worker is full of pinned models: the other),
    # and the load is the model's busy time, in the ledger.
    loads_before = sum(
        REGISTRY.get_sample_value(FRONT_END_LOADS, {"model": "m4", "instance": i, "outcome": "ok"})
        or 0.0
        for i in placed
    )
    await plane.sync()
    charged_before = (await db.costs()).per_model_usd.get("m4", 0.0)
    busy_before = {i: _busy(i, "m4") for i in placed}
    await plane.front_end_sync()
    await plane.traffic({"m4": 1}, 0.0)
    answer = plane.answers[-1]
    assert isinstance(answer, Answer)
    np.testing.assert_allclose(answer.response.outputs[0].array, expected(SCALES["m4"]), rtol=1e-5)
    metrics.flush()
    loads_after = sum(
        REGISTRY.get_sample_value(FRONT_END_LOADS, {"model": "m4", "instance": i, "outcome": "ok"})
        or 0.0
        for i in placed
    )
    assert loads_after == loads_before + 1
    assert answer.instance_id is not None
    assert _busy(answer.instance_id, "m4") > busy_before[answer.instance_id]
    await plane.sync(60.0)  # past EC2's 60 s billing minimum, which the first charge paid
    assert (await db.costs()).per_model_usd["m4"] > charged_before

    failed = [a for a in plane.answers if not isinstance(a, Answer)]
    assert not failed, failed[:5]


# Cortex's router example, by language suffix: "en" by rule, the others in "rest"
GROUPED = {"a-en": 1.0, "b-en": 2.0, "a-de": 3.0, "b-de": 4.0}
EN_RULE = {"name": "en", "patterns": ["*-en", "en-*"]}


async def test_route_groups_keep_each_model_on_its_groups_workers(tmp_path: Path) -> None:
    steady = {name: 5 for name in GROUPED}  # 1 rps each: one worker per group holds both
    async with _plane(tmp_path, GROUPED, steady, groups=[EN_RULE]) as plane:
        db, fleet = plane.db, plane.fleet
        plane.clock.now_s -= BUCKET_S
        await plane.tick()
        launched = await db.list_instances()
        by_group = {i.models: i.id for i in launched}
        assert set(by_group) == {("a-en", "b-en"), ("a-de", "b-de")}, "one worker per group"
        home = {name: iid for models, iid in by_group.items() for name in models}
        for inst in launched:
            await plane.cloud.wait_running(inst.id, 60.0)
        await plane.sync()
        # each worker's index holds its group alone; the front end routes (and would load)
        # each model only on its group's worker
        held = await plane.held()
        assert held == {iid: frozenset(models) for models, iid in by_group.items()}
        for name in GROUPED:
            await _until(f"{name} is routed", lambda n=name: fleet.resident(n) == [home[n]])
            assert fleet.routable(name) == [home[name]]

        answers = await plane.traffic(steady, BUCKET_S)
        assert all(isinstance(a, Answer) and a.instance_id == home[n] for n, a in answers)
        await plane.tick()  # the bucket ended, steady: no move
        assert {i.id: i.placed_models for i in await db.list_instances()} == {
            iid: models for models, iid in by_group.items()
        }

        # b-de's traffic stops: unloaded (scale to zero); its next request is a load on its
        # group's worker, though the en worker has room for a third model
        others = {n: c for n, c in steady.items() if n != "b-de"}
        await plane.traffic(others, BUCKET_S)
        await plane.tick()
        await _until("the front end stops routing b-de", lambda: not fleet.resident("b-de"))
        await plane.sync(DRAIN_S)
        assert not any("b-de" in models for models in (await plane.held()).values())
        assert fleet.routable("b-de") == [home["b-de"]]
        # A request between the unload and the sync that clears the mark: no load there while
        # it is marked (a copy loaded then would be marked, routed to by no one, unloaded
        # again); it waits for the mark to go, then loads.
        marked = [i.id for i in await db.list_instances() if "b-de" in i.draining_models]
        assert marked == [home["b-de"]]
        loads = _front_end_loads("b-de", set(home.values()))
        await plane.front_end_sync()  # it sees the unload, and the mark
        sent = plane.sent.get("b-de", 0.0)
        waiting = asyncio.create_task(plane.traffic({"b-de": 1}, 0.0))
        await _until("the request reached the front end", lambda: plane.sent["b-de"] > sent)
        await plane.sync()  # the index says it left: the mark is cleared
        [(_, answer)] = await waiting
        assert isinstance(answer, Answer) and answer.instance_id == home["b-de"]
        assert _front_end_loads("b-de", set(home.values())) == loads + 1

        en = by_group[("a-en", "b-en")]
        async with aiohttp.ClientSession() as s:
            [endpoint] = [i.endpoint for i in await db.list_instances() if i.id == en]
            assert endpoint is not None
            found = await samples(s, endpoint)
        loaded = {
            labels.split("model=")[1].split(",")[0]
            for (sample, labels), value in found.items()
            if sample == "mark_worker_model_loads_total" and value > 0
        }
        assert loaded == {"a-en", "b-en"}, "the en worker loaded another group's model"
        failed = [a for a in plane.answers if not isinstance(a, Answer)]
        assert not failed, failed[:5]
