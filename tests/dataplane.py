"""Helpers of the data-plane tests: real `mark worker` subprocesses and instance values."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from sanic import Sanic

from mark.core.config import Config
from mark.core.types import Instance, InstanceState, Market, Model, Offering, Profile, Slo

LISTENING = "listening on "


@dataclass
class WorkerProcess:
    process: asyncio.subprocess.Process
    endpoint: str

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGKILL)


async def spawn_worker(*args: str) -> WorkerProcess:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mark.apps.cli", "worker", "--port", "0", *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
    if LISTENING not in line:
        assert process.stderr is not None
        err = (await process.stderr.read()).decode()
        raise RuntimeError(f"worker did not start: {err}")
    return WorkerProcess(process, line.split(LISTENING, 1)[1].strip())


async def stop_worker(worker: WorkerProcess) -> None:
    with contextlib.suppress(ProcessLookupError):
        worker.process.terminate()
    await worker.process.wait()


@contextlib.asynccontextmanager
async def workers(*arg_lists: Sequence[str]) -> AsyncIterator[list[WorkerProcess]]:
    started = await asyncio.gather(*(spawn_worker(*args) for args in arg_lists))
    try:
        yield list(started)
    finally:
        await asyncio.gather(*(stop_worker(w) for w in started))


@contextlib.asynccontextmanager
async def front_end(config: Config) -> AsyncIterator[Sanic]:
    """A real Mark front end in this event loop: the lead's create_app (with the inference
    blueprint) serving on `config.server.port`, its Fleet syncing from `config.database.url`."""
    import uuid

    from frontend import inference
    from frontend.app import create_app

    app = create_app(config, name=f"t{uuid.uuid4().hex[:8]}")
    app.config.TOUCHUP = False  # Sanic's code rewrite runs only once per process
    if "inference" not in app.blueprints:
        app.blueprint(inference.bp)
    server = await app.create_server(
        host="127.0.0.1", port=config.server.port, return_asyncio_server=True, access_log=False
    )
    assert server is not None
    await server.startup()
    await server.before_start()
    await server.after_start()
    try:
        yield app
    finally:
        await server.before_stop()
        await server.close()
        await server.after_stop()


async def wait_routable(app: Sanic, model_name: str, timeout_s: float = 10.0) -> None:
    """Until the app's fleet routes `model_name` to an instance (it syncs from the database)."""
    async with asyncio.timeout(timeout_s):
        while not app.ctx.fleet.routable(model_name):
            await asyncio.sleep(0.02)


def offering(instance_type: str = "c5.large") -> Offering:
    return Offering(
        instance_type=instance_type, zone="local-a", market=Market.ON_DEMAND, price_per_hour=0.085
    )


def running(
    instance_id: str, endpoint: str, models: Sequence[str] = ("demo",), itype: str = "c5.large"
) -> Instance:
    return Instance(
        id=instance_id,
        offering=offering(itype),
        models=tuple(models),
        state=InstanceState.RUNNING,
        endpoint=endpoint,
        launched_at_s=0.0,
        running_at_s=0.0,
    )


def model(
    name: str = "demo",
    *,
    slo_ms: float = 1000.0,
    profiles: Sequence[Profile] = (),
    max_batch: int = 32,
    protocol: str = "kserve-v2",
    artifact: str = "builtin:mlp",
    backend_model_name: str | None = None,
) -> Model:
    return Model.model_validate(
        {
            "name": name,
            "slo": Slo(latency_ms=slo_ms, percentile=0.98),
            "backend": {
                "protocol": protocol,
                "artifact": artifact,
                "backend_model_name": backend_model_name,
            },
            "profiles": {p.instance_type: p for p in profiles},
            "max_batch": max_batch,
        }
    )


def linear_profile(itype: str, a_ms: float, c_ms: float, max_batch: int = 32) -> Profile:
    """A profile whose fitted line is exactly T(b) = a + c*b."""
    return Profile(
        instance_type=itype,
        latency_ms={1: a_ms + c_ms, max_batch: a_ms + c_ms * max_batch},
        max_batch=max_batch,
    )
