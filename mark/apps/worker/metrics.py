"""`mark worker`'s Prometheus metrics, served at its own `GET /metrics` (docs/metrics.md).

One process, one registry: `mark worker` drops PROMETHEUS_MULTIPROC_DIR before prometheus_client
is imported (mark/apps/commands/worker.py), so a worker started by `mark serve`'s local cloud
never writes into the front end's multiprocess files. `model` takes only names the worker has
found in its store or was started with, so the label set is bounded by the store.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "CACHE_REQUESTS",
    "LOADS",
    "LOAD_FAILURES",
    "LOAD_SECONDS",
    "EVICTIONS",
    "RELOADS",
    "RESIDENT_BYTES",
    "MEMORY_BUDGET",
    "MEMORY_USED",
    "DISK_USED",
    "STORE_POLLS",
]

CACHE_REQUESTS = Counter(
    "mark_worker_cache_requests",
    "Requests for a model by whether it was in memory (hit), had to be loaded (miss) or could "
    "not be loaded (refused: no room, too large, or its artifact failed).",
    ["model", "result"],
)
LOADS = Counter(
    "mark_worker_model_loads",
    "Completed loads into memory, by where the artifact came from: store, disk (the worker's "
    "disk tier) or file (a --model path).",
    ["model", "source"],
)
LOAD_FAILURES = Counter(
    "mark_worker_model_load_failures", "Loads that failed (the reason is in the index).", ["model"]
)
LOAD_SECONDS = Histogram(
    "mark_worker_model_load_seconds",
    "Time to load a model: fetch (if not on disk), read and build.",
    ["model"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
EVICTIONS = Counter(
    "mark_worker_model_evictions",
    "Models moved out of a tier: `tier` memory (to disk) or disk (deleted); `reason` lru or "
    "unload (the repository API).",
    ["model", "tier", "reason"],
)
RELOADS = Counter(
    "mark_worker_model_reloads",
    "Live reloads: a changed artifact loaded beside the old version and swapped in.",
    ["model"],
)
RESIDENT_BYTES = Gauge(
    "mark_worker_model_resident_bytes", "Memory charged to each loaded model.", ["model"]
)
MEMORY_BUDGET = Gauge("mark_worker_memory_budget_bytes", "The memory budget (0: unbounded).")
MEMORY_USED = Gauge(
    "mark_worker_memory_used_bytes", "Memory charged: loaded models, old versions draining, loads."
)
DISK_USED = Gauge("mark_worker_disk_used_bytes", "Bytes of artifacts in the disk tier.")
STORE_POLLS = Counter(
    "mark_worker_store_polls", "Polls of the store for changed artifacts of loaded models."
)
