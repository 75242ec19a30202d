"""The Sanic application: inference, admin API, console, health and metrics on one port.

`create_app(config)` is the factory every HTTP worker process calls. Each worker opens the
database and syncs its view of the fleet from it; the control plane (cloud provider, control loop,
serverless pool) runs in one separate process that `mark serve` starts (`mark.apps.control`).
"""

from __future__ import annotations

import logging
import math
import os
import secrets
from pathlib import Path

from sanic import Request, Sanic
from sanic.response import HTTPResponse, json

from frontend import admin, admin_keys, console, inference, observability, status
from frontend.errors import install_error_handlers
from mark.adapters.db import Database
from mark.core.config import Config

__all__ = ["create_app", "admin_token_for"]

logger = logging.getLogger("mark.frontend")

TOKEN_FILE = ".mark-admin-token"


def admin_token_for(config: Config) -> str:
    """The configured admin token, or one generated once per working directory and kept in
    `.mark-admin-token` (mode 0600), so a newcomer's `make run` is protected yet usable.

    The file appears whole or not at all (written beside it, then linked into place, which
    fails if it exists): processes starting together in one directory (two `mark serve`, the
    test suite's workers) all take the first one's token, never an empty or a second one."""
    if config.server.admin_token:
        return config.server.admin_token
    path = Path(TOKEN_FILE)
    if not path.exists():
        draft = path.with_name(f"{TOKEN_FILE}.{os.getpid()}")
        draft.touch(mode=0o600)
        draft.write_text(secrets.token_urlsafe(24) + "\n")
        try:
            os.link(draft, path)
        except FileExistsError:
            pass  # another process made it first: its token is the one
        finally:
            draft.unlink()
    return path.read_text().strip()


def create_app(config: Config, *, name: str = "mark") -> Sanic:
    app = Sanic(name, configure_logging=True)
    app.config.AUTO_EXTEND = False  # sanic-ext is not used; it would add work to every request
    app.config.REQUEST_MAX_SIZE = int(config.server.max_body_mb * 1024 * 1024)
    app.config.REQUEST_TIMEOUT = math.ceil(config.server.request_timeout_s)
    app.config.RESPONSE_TIMEOUT = math.ceil(config.server.request_timeout_s)
    app.config.KEEP_ALIVE_TIMEOUT = 75
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.config.ACCESS_LOG = False
    app.ctx.config = config
    app.ctx.logger = logger
    app.ctx.admin_token = admin_token_for(config)
    install_error_handlers(app)

    @app.before_server_start
    async def _open(app: Sanic) -> None:
        app.ctx.db = await Database.open(config.database.url, echo=config.database.echo)

    @app.after_server_stop
    async def _close(app: Sanic) -> None:
        db: Database | None = getattr(app.ctx, "db", None)
        if db is not None:
            await db.close()

    @app.get("/v2/health/live")
    async def live(request: Request) -> HTTPResponse:
        return json({"live": True})

    @app.get("/v2/health/ready")
    async def ready(request: Request) -> HTTPResponse:
        ok = getattr(request.app.ctx, "db", None) is not None
        return json({"ready": ok}, status=200 if ok else 503)

    app.blueprint(admin.bp)
    app.blueprint(admin_keys.bp)
    app.blueprint(admin.openapi_bp)
    app.blueprint(observability.bp)
    app.blueprint(inference.bp)
    app.blueprint(status.bp)
    app.blueprint(console.bp)
    return app
