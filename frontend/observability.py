"""`/metrics` and the admin API's own counters.

`mark serve` runs several processes (HTTP workers and the control plane), so it sets
PROMETHEUS_MULTIPROC_DIR before anything creates a metric; the endpoint then aggregates every
process's files. Without that variable (tests, single process) it serves the default registry.
"""

from __future__ import annotations

import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.process_collector import ProcessCollector
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, raw

from frontend import metrics as inference_metrics

__all__ = ["bp", "ADMIN_REQUESTS", "ADMIN_LATENCY", "observe_admin", "registry"]

bp = Blueprint("observability")

ADMIN_REQUESTS = Counter(
    "mark_admin_requests_total",
    "Admin API requests by method, route and status.",
    ["method", "route", "status"],
)
ADMIN_LATENCY = Histogram(
    "mark_admin_request_seconds", "Admin API request latency.", ["method", "route"]
)


def registry() -> CollectorRegistry:
    """Every process's metrics in `mark serve` (one worker's alone otherwise)."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    out = CollectorRegistry()
    MultiProcessCollector(out)
    ProcessCollector(registry=out)
    return out


def observe_admin(request: Request, status: int) -> None:
    route = request.route.name.rsplit(".", 1)[-1] if request.route else "unknown"
    ADMIN_REQUESTS.labels(request.method, route, str(status)).inc()
    started = getattr(request.ctx, "started_s", None)
    if started is not None:
        ADMIN_LATENCY.labels(request.method, route).observe(time.perf_counter() - started)


@bp.get("/metrics")
async def metrics(request: Request) -> HTTPResponse:
    inference_metrics.flush()  # this process's buffered answers count in its own scrape
    return raw(generate_latest(registry()), content_type=CONTENT_TYPE_LATEST)
