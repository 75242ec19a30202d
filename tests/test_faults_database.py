"""The database unreachable for a while under load (issue 18, item 2): `mark serve --demo` on
PostgreSQL reached through a TCP proxy on loopback that the test controls. For the outage the
proxy closes every connection and refuses new ones; meanwhile the front ends serve from their
last view of the fleet (`frontend.fleet`), and the control loop's ticks and syncs fail without
deciding anything (it reads models and instances from the database first). When the proxy
accepts again the loop resumes: new decisions are written, and none is written twice."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from mark.adapters.db import Database
from mark.apps.control.loop import ControlLoop, Schedule
from mark.core.catalog import load_catalog
from mark.core.config import Config
from provisioner.adapters.local_cloud import LocalCloud
from tests.conftest import Served, _pg_url_or_skip, free_port
from tests.faults import admin_get, admin_post, bounded_load, instances, wait_for
from tests.test_faults_control_plane import LATER_MODEL
from traces import Trace

MODEL = "demo"
OUTAGE_S = 10.0
DURING = 300  # requests sent while the database is unreachable
AFTER = 100  # and after it returns
CONCURRENCY = 8
CONFIG = """
[control]
tick_s = 1.0
sync_s = 0.5
[cloud]
zones = ["us-east-1a"]
[planner]
spot = false
allowed_types = ["c5.large"]
[forecast]
predictor = "last"
bucket_s = 1.0
[batching]
worker_timeout_s = 1.0
health_interval_s = 0.5
"""


class Proxy:
    """A TCP forwarder to PostgreSQL, on its own thread and event loop (the serve fixtures
    block the test's), that can go down: `cut` closes every connection and the listening
    socket (new connections are refused), `restore` listens again on the same port."""

    def __init__(self, upstream_port: int) -> None:
        self.port = free_port()
        self.upstream_port = upstream_port
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10.0)

    def restore(self) -> None:
        self._call(self._listen())

    def cut(self) -> None:
        self._call(self._cut())

    def close(self) -> None:
        if self.server is not None:
            self.cut()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10.0)
        self.loop.close()

    async def _listen(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        await self.server.wait_closed()
        self.server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers -= {writer, up_writer}


async def _create_database(url: str, sql: str) -> None:
    admin = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.exec_driver_sql(sql)
    finally:
        await admin.dispose()


@pytest.fixture
def proxied() -> Iterator[tuple[Proxy, str, str]]:
    """A database of its own on MARK_TEST_PG_URL's server, its URL direct and through a proxy;
    requested before `serve_factory`, so that both outlive the server."""
    url = _pg_url_or_skip()
    name = "mark_faults_" + uuid.uuid4().hex[:12]
    try:
        asyncio.run(_create_database(url, f'CREATE DATABASE "{name}"'))
    except OSError as exc:
        pytest.skip(f"PostgreSQL at {url} is unreachable: {exc}")
    direct = make_url(url).set(database=name)
    proxy = Proxy(direct.port or 5432)
    proxy.restore()
    try:
        yield (
            proxy,
            direct.render_as_string(hide_password=False),
            direct.set(port=proxy.port).render_as_string(hide_password=False),
        )
    finally:
        proxy.close()
        asyncio.run(_create_database(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _rows(url: str, sql: str) -> list[Any]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return list((await conn.exec_driver_sql(sql)).all())
    finally:
        await engine.dispose()


@pytest.mark.pg
async def test_database_outage_serving_goes_on_and_the_loop_resumes(
    proxied: tuple[Proxy, str, str], serve_factory: Any
) -> None:
    proxy, direct, through = proxied
    served: Served = serve_factory(through, extra_args=("--demo",), config_text=CONFIG)

    async def running() -> list[Any]:
        return [i for i in await instances(served, MODEL) if i["state"] == "running"]

    assert len(await wait_for(running, 60.0)) == 1, served.log()[-3000:]
    proxy.cut()
    cut_at = time.time()
    during = await bounded_load(
        served.base_url, MODEL, requests=DURING, concurrency=CONCURRENCY, timeout_s=30.0
    )
    await asyncio.sleep(max(OUTAGE_S - (time.time() - cut_at), 0.0))
    assert served.process.poll() is None, served.log()[-3000:]
    proxy.restore()
    back_at = time.time()
    after = await bounded_load(
        served.base_url, MODEL, requests=AFTER, concurrency=CONCURRENCY, timeout_s=30.0
    )

    # A steady fleet decides nothing; a model added now makes the resumed loop launch for it.
    await admin_post(served, "/admin/v1/models", LATER_MODEL)

    async def resumed() -> list[Any]:
        page = await admin_get(served, "/admin/v1/decisions?limit=200&model=later")
        return [d for d in page["decisions"] if d["at_s"] > back_at and d["action"] == "launch"]

    new = await wait_for(resumed, 30.0)
    later = await wait_for(lambda: instances(served, "later"), 10.0)
    log = served.log()
    assert served.process.poll() is None, log[-3000:]
    assert during.counts == Counter({200: DURING}), (during.counts, log[-3000:])
    assert after.counts == Counter({200: AFTER}), (after.counts, log[-3000:])
    assert new, f"no decision after the database returned:\n{log[-3000:]}"
    decisions = await _rows(
        direct, "SELECT at_s, action, reason, instance_id, offering_key FROM decisions"
    )
    assert not [d for d, n in Counter(decisions).items() if n > 1], "a decision written twice"
    transitions = await _rows(
        direct, "SELECT instance_id, from_state, to_state, at_s FROM instance_transitions"
    )
    assert not [t for t, n in Counter(transitions).items() if n > 1]
    ids = [r[0] for r in await _rows(direct, "SELECT id FROM instances")]
    charged = [r[0] for r in await _rows(direct, "SELECT instance_id FROM instance_charges")]
    assert sorted(charged) == sorted(ids), (charged, ids)
    live = await _rows(direct, "SELECT models, state FROM instances WHERE state != 'terminated'")
    assert sorted(str(m) for m, _ in live) == ["['demo']", "['later']"], live  # none bought twice
    assert len(later) == 1, later
    updated = await _rows(direct, "SELECT updated_at_s FROM instance_charges")
    assert max(u for (u,) in updated) > back_at  # the ledger is written again
    during_outage = [d for d in decisions if cut_at < d[0] < back_at]
    assert not during_outage, during_outage  # the loop decides nothing it cannot record


async def test_a_launch_the_database_refused_is_written_by_the_next_sync(tmp_path: Path) -> None:
    """The database goes away between the cloud's launch and the row that records it: the
    next sync writes the row, so the instance is adopted and the next tick does not buy it
    again (without the row, it would see no capacity and launch a second one)."""
    model = load_catalog().model("demo").to_model()
    db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'loop.db'}")
    await db.create_model(model)
    config = Config.model_validate(
        {
            "cloud": {"zones": ["us-east-1a"], "launch_overhead_scale": 0.001},
            "forecast": {"predictor": "last"},
            "planner": {"spot": False, "allowed_types": ["c5.large"]},
        }
    )
    start = time.time()
    times = np.arange(start - 60.0, start + 3600.0, 60.0)
    demand = Schedule(Trace(timestamps_s=times, counts=np.full(times.size, 60.0), bucket_s=60.0))
    cloud = LocalCloud(config.cloud, models=db.get_model, state_dir=tmp_path / "cloud")
    loop = ControlLoop(db, cloud, config, counts=dict, schedule=demand, clock=lambda: start)
    save = db.save_instance

    async def unreachable(_: object) -> None:
        raise OSError("connection refused")

    try:
        db.save_instance = unreachable  # type: ignore[method-assign]
        with pytest.raises(OSError):
            await loop.tick()
        launched = [i.id for i in await cloud.list()]
        assert len(launched) == 1 and await db.list_instances() == []
        db.save_instance = save  # type: ignore[method-assign]
        await loop.sync()
        assert [i.id for i in await db.list_instances()] == launched
        await loop.tick()
        assert [i.id for i in await cloud.list()] == launched  # not bought twice
    finally:
        await cloud.close()
        await db.close()
