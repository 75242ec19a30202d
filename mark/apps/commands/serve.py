"""`mark serve`: the whole control plane on one port.

Process layout: Sanic's manager process starts `server.workers` HTTP worker processes (front end
and admin API) and one control-plane process (`mark.apps.control.plane.run`): cloud provider,
control
loop, reconciliation, serverless pool. They share state through the database and Prometheus
multiprocess files. SIGINT/SIGTERM stop every process; the control plane terminates the local
instances it started before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import tempfile
from functools import partial
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("serve", help="run the front end, admin API and control loop")
    p.add_argument("--config", help="TOML config file (default: embedded defaults)")
    p.add_argument("--host", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default 8000)")
    p.add_argument("--workers", type=int, help="HTTP worker processes (default 1)")
    p.add_argument(
        "--demo",
        action="store_true",
        help="register the demo model (builtin:mlp, SLO 100 ms at p99) and start one instance",
    )
    p.set_defaults(func=run)


def _server_overrides(args: argparse.Namespace) -> dict[str, Any]:
    server: dict[str, Any] = {}
    for key in ("host", "port", "workers"):
        if getattr(args, key) is not None:
            server[key] = getattr(args, key)
    if args.demo:
        server["demo"] = True
    return server


def _resolve(config: Any) -> Any:
    """Settle what every process must agree on before they start: the local serverless pool's
    port (0 means any free one), and in demo mode a floor of one instance per model."""
    updates: dict[str, Any] = {}
    if config.serverless.provider == "local" and config.serverless.local_port == 0:
        with socket.socket() as s:
            s.bind((config.serverless.local_host, 0))
            port = s.getsockname()[1]
        updates["serverless"] = config.serverless.model_copy(update={"local_port": port})
    if config.server.demo and config.planner.min_instances == 0:
        updates["planner"] = config.planner.model_copy(update={"min_instances": 1})
    return config.model_copy(update=updates) if updates else config


def run(args: argparse.Namespace) -> int:
    from mark.core.config import load_config

    # One BLAS thread per process: several processes share the cores, and statsmodels' fits
    # run 5-10x slower when every process spawns a thread per core.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    config = _resolve(load_config(args.config, server=_server_overrides(args)))
    own_metrics_dir = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    if own_metrics_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="mark-metrics-")
    try:
        return _serve(config)
    finally:
        if own_metrics_dir:
            shutil.rmtree(os.environ.pop("PROMETHEUS_MULTIPROC_DIR"), ignore_errors=True)


def _serve(config: Any) -> int:
    from sanic import Sanic
    from sanic.worker.loader import AppLoader

    from frontend.app import admin_token_for
    from mark.apps.control.plane import attach_control_plane

    admin_token_for(config)  # settled here, before the workers read it
    # Migrate once here, before the workers and the control plane open the database together.
    asyncio.run(_migrate(config.database.url))
    loader = AppLoader(factory=partial(_worker_app, config))
    app = loader.load()
    attach_control_plane(app, config)
    where = f"http://{config.server.host}:{config.server.port}"
    # Where the token is, never any of it: logs are read by more people than the token is for.
    source = "server.admin_token" if config.server.admin_token else ".mark-admin-token"
    print(f"mark: serving on {where} (admin token in {source})", flush=True)
    app.prepare(
        host=config.server.host,
        port=config.server.port,
        workers=config.server.workers,
        single_process=False,
        motd=False,
        access_log=False,
    )
    Sanic.serve(primary=app, app_loader=loader)
    return 0


async def _migrate(url: str) -> None:
    from mark.adapters.db import Database

    db = await Database.open(url)
    await db.close()


def _worker_app(config: Any) -> Any:
    from frontend.app import create_app

    return create_app(config)
