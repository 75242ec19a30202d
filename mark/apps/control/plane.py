"""The control-plane process of `mark serve`.

Sanic's manager starts it beside the HTTP workers (`attach_control_plane`), and a watchdog
thread in the manager restarts it when it dies while `mark serve` runs (a crash, an OOM kill):
the restarted process reconciles with the cloud and the loop resumes, as under systemd's
`Restart=always`; the front ends serve on meanwhile from their last view of the fleet. It opens the
database, builds the cloud provider and the serverless pool, reconciles the database with the
cloud, registers the demo model when asked, and runs the control loop under APScheduler until
SIGTERM/SIGINT (or its parent dies). On the local cloud it then terminates and records every
instance it runs, so that no worker process outlives `mark serve`; on EC2 the fleet keeps serving
and the next control plane adopts it.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack
from typing import Any

from sanic import Sanic

from mark.adapters.db import Database
from mark.core.config import Config
from mark.core.errors import Conflict
from provisioner.adapters.cloud import CloudProvider
from provisioner.adapters.retry import RetryingCloud

__all__ = [
    "attach_control_plane",
    "run",
    "DEMO_MODEL",
    "observed_counts",
    "ejected_instances",
    "busy_seconds",
    "build_cloud",
    "publish_offerings",
]

logger = logging.getLogger("mark.apps.control")

DEMO_MODEL = "demo"
REQUESTS_METRIC = "mark_inference_requests"
EJECTED_METRIC = "mark_instance_ejected"
BUSY_METRIC = "mark_instance_busy_seconds"
PROCESS_NAME = "MarkControlPlane"
_WATCHDOG_INTERVAL_S = 1.0
_CRASH_LOOP_S = 60.0
_MAX_BACKOFF_S = 30.0


def attach_control_plane(app: Sanic, config: Config) -> None:
    @app.main_process_ready
    async def _start(app: Sanic, _: Any) -> None:
        worker = app.manager.manage(PROCESS_NAME, run, {"settings": config}, restartable=True)
        threading.Thread(
            target=_watchdog, args=(app.manager, worker), name="mark-control-watchdog", daemon=True
        ).start()


def _watchdog(manager: Any, worker: Any) -> None:
    """Restart the control-plane process whenever it has exited and the manager is not shutting
    down. The restart is asked of the manager's monitor loop through its own message pipe (the
    way a worker asks for one), so it runs in the monitor's thread; a request made before the
    monitor saw the exit is refused there and asked again at the next check. A process that
    dies within `_CRASH_LOOP_S` of its restart waits twice as long for the next one (up to
    `_MAX_BACKOFF_S`), so a control plane that cannot start does not spin."""
    started_s, backoff_s = time.monotonic(), 0.0
    dead_pid: int | None = None
    due_s = 0.0
    while not getattr(manager, "_shutting_down", False):
        time.sleep(_WATCHDOG_INTERVAL_S)
        for process in worker.processes:
            if not process.pid or process.is_alive() or manager._shutting_down:
                continue
            now = time.monotonic()
            if process.pid != dead_pid:  # a new exit: when to restart it
                dead_pid = process.pid
                quick = now - started_s < _CRASH_LOOP_S
                backoff_s = min(max(2 * backoff_s, _WATCHDOG_INTERVAL_S), _MAX_BACKOFF_S)
                backoff_s = backoff_s if quick else 0.0
                due_s = now + backoff_s
                logger.warning(
                    "the control plane (pid %s) exited with code %s; restarting it in %.0f s",
                    process.pid,
                    process.exitcode,
                    backoff_s,
                )
            if now >= due_s:
                manager.monitor_publisher.send(f"{process.name}:")
                started_s = now


def run(settings: Config) -> None:
    """Entry point of the managed process. Stop signals are blocked until the event loop can
    handle them, so a signal during start-up is never lost nor half-handled. (Not named
    `config`: on a restart Sanic replaces a `config` argument with its reload settings.)"""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    # Sanic starts managed processes as daemons, and multiprocessing refuses children to a
    # daemon; the local function pool's sandboxes are children of this process (and are
    # reaped by it on the way out).
    multiprocessing.current_process().daemon = False
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    asyncio.run(_main(settings))


_SHUTDOWN_GRACE_S = 20.0


def _exit_if_stuck(grace_s: float) -> None:
    """Clean-up (terminating local instances, closing pools) gets `grace_s`; a stuck step must
    not keep `mark serve` from exiting. Local workers die with this process (parent-death
    signal), so a forced exit still leaves none behind."""
    timer = threading.Timer(grace_s, os._exit, args=(1,))
    timer.daemon = True
    timer.start()


def observed_counts() -> Mapping[str, float]:
    """Cumulative inference requests per model, summed over every HTTP worker's multiprocess
    metric files (and over path and status code)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return {}
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    totals: dict[str, float] = {}
    for metric in registry.collect():
        if metric.name != REQUESTS_METRIC:
            continue
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                model = sample.labels.get("model", "")
                totals[model] = totals.get(model, 0.0) + sample.value
    return totals


def ejected_instances() -> set[str]:
    """Ids of the instances some live HTTP worker keeps ejected now (its
    `mark_instance_ejected` gauge is 1), read from the multiprocess metric files as
    `observed_counts` reads the request counts."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return set()
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return {
        sample.labels["instance"]
        for metric in registry.collect()
        if metric.name == EJECTED_METRIC
        for sample in metric.samples
        if sample.value > 0 and "instance" in sample.labels
    }


def busy_seconds() -> Mapping[tuple[str, str], float]:
    """Cumulative seconds this host's HTTP workers had batches in service per (instance id,
    model), their `mark_instance_busy_seconds` counters summed as `observed_counts` sums
    the request counts."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return {}
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    totals: dict[tuple[str, str], float] = {}
    for metric in registry.collect():
        if metric.name != BUSY_METRIC:
            continue
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                key = (sample.labels.get("instance", ""), sample.labels.get("model", ""))
                totals[key] = totals.get(key, 0.0) + sample.value
    return totals


def build_cloud(config: Config, db: Database) -> CloudProvider:
    """The configured provider behind the one retry layer for cloud calls: a transient
    CloudError is retried `control.apply_retries` times with backoff (RetryingCloud)."""
    inner: CloudProvider
    if config.cloud.provider == "ec2":
        from provisioner.adapters.ec2 import Ec2Cloud

        inner = Ec2Cloud(
            config.cloud, models=db.get_model, offered_types=config.planner.allowed_types
        )
    else:
        from provisioner.adapters.local_cloud import LocalCloud

        inner = LocalCloud(config.cloud, models=db.get_model, worker=config.worker)
    return RetryingCloud(inner, retries=config.control.apply_retries)


async def _main(config: Config) -> None:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    from mark.apps.control.loop import ControlLoop, Schedule
    from predictors.registry import create_forecaster
    from provisioner.policy.capacity import CapacityCache

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    parent = os.getppid()

    async with AsyncExitStack() as stack:
        db = await Database.open(config.database.url, echo=config.database.echo)
        stack.push_async_callback(db.close)
        cloud = build_cloud(config, db)
        stack.push_async_callback(cloud.close)
        await db.sync_instance_types(await cloud.instance_types())
        await publish_offerings(db, cloud)
        pool = await _start_serverless(config, stack)

        schedule = (
            Schedule.load(config.forecast.schedule_file) if config.forecast.schedule_file else None
        )
        # Capacities sized with the budget the front ends batch with (config.batching).
        cache = CapacityCache(budget_fraction=config.batching.slo_budget_fraction)
        control = ControlLoop(
            db,
            cloud,
            config,
            observed_counts,
            schedule=schedule,
            serverless=pool,
            ejected=ejected_instances,
            busy=busy_seconds,
            cache=cache,
        )
        stack.push_async_callback(control.close)
        if config.control.leader_election:
            # The manager's pid: a control plane restarted by the watchdog is the same holder
            # and renews its lease at once instead of waiting for it to run out.
            control.holder = f"{socket.gethostname()}:{parent}"
            stack.push_async_callback(db.release_lease, control.holder)
        if config.cloud.provider == "local":
            stack.push_async_callback(control.release_all)
        if await control.lead(control.clock()):
            await control.sync()
        if config.server.demo:
            await start_demo(db, control)

        scheduler = AsyncIOScheduler()
        job = {"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
        if config.control.enabled:
            scheduler.add_job(
                control.tick, "interval", seconds=config.control.tick_s, id="tick", **job
            )
        scheduler.add_job(
            control.sync_and_replan, "interval", seconds=config.control.sync_s, id="sync", **job
        )
        if config.control.leader_election:
            scheduler.add_job(
                control.renew, "interval", seconds=config.control.sync_s, id="renew", **job
            )
        scheduler.add_job(
            publish_offerings, "interval", args=(db, cloud), seconds=config.control.tick_s, **job
        )
        scheduler.start()
        # The forecaster's module (statsmodels for arima) takes seconds to import: import it
        # now, off the event loop, so that a re-plan before the first tick (a crashed
        # instance's replacement) does not wait for it.
        preload = asyncio.create_task(
            asyncio.to_thread(
                create_forecaster, config.forecast.predictor, config.forecast.bucket_s
            )
        )
        watcher = asyncio.create_task(control.watch_interruptions())
        logger.info(
            "control plane running (cloud %s, tick %.0f s)", cloud.name, config.control.tick_s
        )
        while not stop.is_set() and os.getppid() == parent:
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except TimeoutError:
                pass
        logger.info("control plane stopping")
        _exit_if_stuck(_SHUTDOWN_GRACE_S)
        scheduler.shutdown(wait=False)
        watcher.cancel()
        await asyncio.gather(watcher, preload, return_exceptions=True)


async def _start_serverless(config: Config, stack: AsyncExitStack) -> Any:
    """The local function pool and its Lambda Invoke API, which the HTTP workers call at
    127.0.0.1:serverless.local_port (resolved by `mark serve` before the processes start);
    the pool is returned for the control loop to warm."""
    if config.serverless.provider != "local":
        return None
    from provisioner.adapters.serverless import InvokeServer, LocalFunctionPool

    endpoint = config.worker.store_endpoint_url  # where S3-only models' artifacts are
    pool = LocalFunctionPool(
        config.serverless, environment={"AWS_ENDPOINT_URL_S3": endpoint} if endpoint else None
    )
    stack.push_async_callback(pool.close)
    server = InvokeServer(
        pool, host=config.serverless.local_host, port=config.serverless.local_port
    )
    url = await server.start()
    stack.push_async_callback(server.close)
    logger.info("local serverless pool at %s", url)
    return pool


async def publish_offerings(db: Database, cloud: Any) -> None:
    """The offerings and prices the admin API lists: the cloud's own (for the local cloud, the
    catalog's), at start-up and every tick."""
    await db.replace_offerings(await cloud.offerings(), time.time())


async def start_demo(db: Database, control: Any) -> None:
    """Register the demo model (builtin MLP, SLO 100 ms at p99) and start one local instance of
    `cloud.local_instance_type` for it, so a newcomer can curl an inference at once."""
    from mark.core.catalog import load_catalog
    from mark.core.types import BackendSpec, Market, Model, Slo

    entry = load_catalog().model(DEMO_MODEL)
    model = Model(
        name=DEMO_MODEL,
        slo=Slo(latency_ms=100.0, percentile=0.99),
        backend=BackendSpec(protocol="kserve-v2", artifact="builtin:mlp"),
        profiles=dict(entry.profiles),
        max_batch=32,
    )
    try:
        await db.create_model(model)
    except Conflict:
        logger.info("demo model already registered")
    if await db.list_instances(model=DEMO_MODEL):
        return
    itype = control.config.cloud.local_instance_type
    offering = next(
        o
        for o in await control.cloud.offerings()
        if o.instance_type == itype and o.market == Market.ON_DEMAND
    )
    instance = await control.cloud.launch(offering, [DEMO_MODEL])
    await db.save_instance(instance)
    logger.info("demo instance %s launching on %s", instance.id, offering.key)
