"""Prometheus metrics of the inference path (served at `/metrics` by frontend/observability.py).

Multiprocess-safe: `mark serve` sets PROMETHEUS_MULTIPROC_DIR before this module is imported, so
each Sanic worker writes its own files and `/metrics` sums them; gauges use `livesum` (only live
processes count). The control loop reads the observed arrival rate per model from
`mark_inference_requests_total` (summed over `path` and `code`).

`path` says who answered: `instance`, `serverless` (spilled), or `none` (rejected or failed).
Spills are also counted by reason (`mark_spill_total`), with their cost
(`mark_spill_cost_usd_total`). The cost ledger shares each instance's charge among its models by
`mark_instance_busy_seconds_total` (read by the control plane, like the request counts).
SLO attainment = `mark_inference_slo_total{met="true"}` / `mark_inference_slo_total`.

The per-request series (answers, latency, SLO, queue time, batch size, in-flight) are buffered:
the hot path adds to plain dicts (`add`, `observe`), and `flush` writes the totals every
FLUSH_INTERVAL_S (the fleet's task), before every scrape of this process and at shutdown. In
multiprocess mode each write to a metric is a locked write to a memory-mapped file, so writing
per request cost about 17 us of the front end's ~270 us per request at 16 connections (a third
of that per histogram observation); a flush writes each series once. Another worker's latest
fraction of a second may be missing from a scrape; nothing is lost.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter as Tally
from functools import lru_cache
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

__all__ = [
    "REQUESTS",
    "LATENCY",
    "QUEUE_TIME",
    "BATCH_SIZE",
    "SLO",
    "INSTANCE_INFLIGHT",
    "INSTANCE_ERRORS",
    "INSTANCE_EJECTED",
    "INSTANCE_BUSY",
    "RETRIES",
    "HELD",
    "SHED",
    "LOADS",
    "UNLOADS",
    "SPILLS",
    "SPILL_FAILURES",
    "SPILL_COST",
    "UNAUTHORIZED",
    "observe_answer",
    "child",
    "add",
    "observe",
    "flush",
    "FLUSH_INTERVAL_S",
]

FLUSH_INTERVAL_S = 0.25

_LATENCY_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0,
    10.0,
)  # fmt: skip

REQUESTS = Counter(
    "mark_inference_requests",
    "Inference requests answered, by model, answering path and HTTP status.",
    ["model", "path", "code"],
)
LATENCY = Histogram(
    "mark_inference_latency_seconds",
    "Time from arrival at the front end to the answer, by model and answering path.",
    ["model", "path"],
    buckets=_LATENCY_BUCKETS_S,
)
QUEUE_TIME = Histogram(
    "mark_inference_queue_seconds",
    "Time a request waited in the front end before its batch was sent.",
    ["model"],
    buckets=_LATENCY_BUCKETS_S,
)
BATCH_SIZE = Histogram(
    "mark_inference_batch_size",
    "Requests per batch sent to an instance.",
    ["model"],
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256),
)
SLO = Counter(
    "mark_inference_slo",
    "Answered requests by whether they met the model's latency SLO.",
    ["model", "met"],
)
INSTANCE_INFLIGHT = Gauge(
    "mark_instance_inflight_requests",
    "Requests sent to an instance and not yet answered.",
    ["model", "instance"],
    multiprocess_mode="livesum",
)
INSTANCE_ERRORS = Counter(
    "mark_instance_errors",
    "Failed calls to an instance (connection, timeout, 5xx), each followed by ejection.",
    ["model", "instance"],
)
INSTANCE_BUSY = Counter(
    "mark_instance_busy_seconds",
    "Seconds this front end had batches of a model in service on an instance (from sending "
    "the call to its answer), and loads of it there that it asked for (a model resident "
    "nowhere). The control plane shares each instance's charge among its models by these.",
    ["model", "instance"],
)
INSTANCE_EJECTED = Gauge(
    "mark_instance_ejected",
    "1 while this front end keeps an instance out of rotation (a failed call; a 503 with "
    "Retry-After or a failed load, then a failed health check; or failing health checks for "
    "batching.boot_grace_s after it joined; then until a health check passes), else 0. The "
    "control plane replaces an instance ejected for "
    "control.unhealthy_replace_s.",
    ["model", "instance"],
    multiprocess_mode="livemax",
)
RETRIES = Counter(
    "mark_inference_retries",
    "Requests re-routed after a failed call, by reason: instance-failed (the instance was "
    "ejected) or not-resident (the instance said it does not have the model).",
    ["model", "reason"],
)
HELD = Gauge(
    "mark_inference_held_requests",
    "Requests held while a model that no instance holds in memory loads (frontend/residency.py).",
    ["model"],
    multiprocess_mode="livesum",
)
SHED = Counter(
    "mark_inference_shed",
    "Requests answered 429 with Retry-After, by reason: late (batching.shed_late) or hold-full "
    "(batching.max_held_per_model requests already wait for the model's load).",
    ["model", "reason"],
)
LOADS = Counter(
    "mark_frontend_model_loads",
    "Model loads the front end asked an instance for (the model was resident nowhere), by "
    "outcome (ok, failed, no-room: refused for want of room beside the models it protects).",
    ["model", "instance", "outcome"],
)
UNLOADS = Counter(
    "mark_frontend_model_unloads",
    "Idle unloads the front end asked an instance for (a model it loaded there had no request "
    "routed to it for batching.unload_idle_s), by outcome: ok, kept (the instance still uses "
    "it: 409) or failed.",
    ["model", "instance", "outcome"],
)

SPILLS = Counter(
    "mark_spill",
    "Requests answered by the serverless pool, by model and reason (deadline, overload, "
    "cold-fleet, draining).",
    ["model", "reason"],
)
SPILL_FAILURES = Counter(
    "mark_spill_failures",
    "Spills the serverless pool did not answer (throttled, failed, too large); each request went "
    "back to the instances or got a 503.",
    ["model", "reason"],
)
SPILL_COST = Counter(
    "mark_spill_cost_usd",
    "What the serverless pool billed for spilled requests (per request plus GB-seconds).",
    ["model"],
)
UNAUTHORIZED = Counter(
    "mark_inference_unauthorized",
    "Inference requests refused with 401 for want of a valid key (frontend/inference_keys.py), "
    "by model and reason (missing, wrong, expired, revoked); not in mark_inference_requests, so "
    "they add nothing to the demand the fleet is planned for.",
    ["model", "reason"],
)


@lru_cache(maxsize=4096)
def child(metric: MetricWrapperBase, *labels: str) -> Any:
    """`metric.labels(*labels)`, memoized: the hot path asks for the same few series on every
    request, and `labels()` costs 3 us in one process, 10 us in multiprocess mode (measured on
    the benchmark VM); prometheus-client keeps every child anyway, so this holds nothing more."""
    return metric.labels(*labels)


_added: dict[Any, float] = {}  # counter or gauge child -> what to add at the next flush
_observed: dict[Any, list[float]] = {}  # histogram child -> observations since the last flush


def add(series: Any, amount: float = 1.0) -> None:
    """Add `amount` to a counter or gauge child (a `child(...)`) at the next flush."""
    _added[series] = _added.get(series, 0.0) + amount


def observe(series: Any, value: float) -> None:
    """Observe `value` on a histogram child at the next flush."""
    found = _observed.get(series)
    if found is None:
        _observed[series] = [value]
    else:
        found.append(value)


def flush() -> None:
    """Write what `add` and `observe` buffered: one write per series and bucket."""
    added = list(_added.items())
    observed = list(_observed.items())
    _added.clear()
    _observed.clear()
    for series, amount in added:
        if amount:
            series.inc(amount)
    for series, values in observed:
        _observe_all(series, values)


def _observe_all(series: Any, values: list[float]) -> None:
    """`series.observe(v)` for every v, with one write per bucket. prometheus-client has no
    bulk observe, so this fills the child's buckets and sum as `Histogram.observe` does (the
    first bucket whose bound is >= v); should a release rename them, it observes one by one."""
    bounds = getattr(series, "_upper_bounds", None)
    buckets = getattr(series, "_buckets", None)
    total = getattr(series, "_sum", None)
    if bounds is None or buckets is None or total is None:
        for value in values:
            series.observe(value)
        return
    for index, count in Tally(bisect_left(bounds, v) for v in values).items():
        buckets[index].inc(count)
    total.inc(sum(values))


def observe_answer(
    model: str, path: str, code: int, latency_s: float, slo_latency_s: float | None
) -> None:
    """Count one answer; SLO attainment only for answers (2xx), 503s and 429s (shed) of known
    models."""
    add(child(REQUESTS, model, path, str(code)))
    observe(child(LATENCY, model, path), latency_s)
    if slo_latency_s is not None:
        met = code == 200 and latency_s <= slo_latency_s
        add(child(SLO, model, "true" if met else "false"))
