"""The control-plane process of `mark serve`.

Sanic's manager starts it beside the HTTP workers (`attach_control_plane`). It opens the
database, publishes the catalog's instance types and offerings, registers the demo model when
asked, and runs the control loop until SIGTERM/SIGINT, then releases every instance it started
on the local cloud so that no worker process outlives `mark serve`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

from sanic import Sanic

from mark.config import Config
from mark.db import Database
from mark.errors import Conflict

__all__ = ["attach_control_plane", "run", "DEMO_MODEL"]

logger = logging.getLogger("mark.control")

DEMO_MODEL = "demo"


def attach_control_plane(app: Sanic, config: Config) -> None:
    @app.main_process_ready
    async def _start(app: Sanic, _: Any) -> None:
        app.manager.manage("MarkControlPlane", run, {"config": config})


def run(config: Config) -> None:
    """Entry point of the managed process."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(_main(config))


async def _main(config: Config) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    db = await Database.open(config.database.url, echo=config.database.echo)
    try:
        await publish_catalog(db, config)
        if config.server.demo:
            await register_demo_model(db)
        await stop.wait()
    finally:
        await db.close()


async def publish_catalog(db: Database, config: Config) -> None:
    """Instance types and offerings the admin API lists (the catalog until a cloud says more)."""
    from mark.catalog import load_catalog

    catalog = load_catalog()
    await db.sync_instance_types(list(catalog.instance_types.values()))
    now = time.time()
    await db.replace_offerings(
        catalog.offerings(config.cloud.zones, at_s=now, spot=config.planner.spot), now
    )


async def register_demo_model(db: Database) -> None:
    from mark.catalog import load_catalog
    from mark.types import BackendSpec, Model, Slo

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
