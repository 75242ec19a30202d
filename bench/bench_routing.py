"""The front end's routing among 1,000 registered models on 20 instances (issue 19,
"Performance": under 10 us per request), against one model on the same 20 instances (today's
single-model path), measured in this run, in one process.

The fleet is a real `Fleet` synced from a real SQLite database (1,000 models, 20 instances each
listing all of them) and the instances' repository indexes over HTTP as `mark worker` serves
them (304 while unchanged since the caller's read: mark/core/protocol/repository.py; served by a
child process: instance k holds 50 models, the 20 most requested on 3 instances each), with the
spill monitor on as under `mark serve`. Two costs make up routing:
- per request, what `Fleet.infer` does before it waits for the answer: the request's deadline
  and queue entry, the pick among the instances holding its model (smooth weighted
  round-robin), the batcher's enqueue and the spill rule's check (`Fleet._route`), and the spill
  watch's pass over the models they queued on; timed over a Zipf(1.1) stream of requests, none
  sent (the batchers' queues are emptied between blocks). "pick" is the instance choice alone;
- per sync (`batching.sync_interval_s`, 0.5 s), reading the models and instances and every
  instance's index and routing each model anew where its residency changed, amortized per
  request at `--rate` requests per second (the CPU this process spent; the indexes are served
  by a child process, as instances serve their own). The first sync, which builds the 20,000
  (model, instance) routes, is reported apart: it is paid once, when the front end starts
  ("first sync s": from the sync's start until every instance passed its first health check
  and is routed to; "stall s": the longest the event loop was blocked meanwhile, which every
  request then in flight waits out).

    .venv/bin/python bench/bench_routing.py [--requests 20000] [--rate 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import free_port, machine
from frontend.batcher import QueuedRequest
from frontend.fleet import Fleet
from frontend.spill_monitor import SpillMonitor
from mark.adapters.db import Database
from mark.core.config import BatchingConfig, ServerlessConfig, SpillConfig
from mark.core.protocol import InferRequest, Tensor, index_etag
from provisioner.adapters.serverless import LocalFunctionPool
from tests.dataplane import model, running

MODELS = 1000
INSTANCES = 20
HOT = 20  # the most requested models, on 3 instances each
TARGET_US = 10.0


def _holders(index: int) -> list[int]:
    """The instances holding model `index` (0: most requested)."""
    first = index % INSTANCES
    if index < HOT:
        return [first, (first + 7) % INSTANCES, (first + 13) % INSTANCES]
    return [first]


Ready = dict[str, dict[int, list[str]]]  # fleet -> instance -> its READY models


def _serve_indexes(ready: Ready, port: int) -> None:
    """Fleet f's instance k's `POST /v2/repository/index` at `http://127.0.0.1:{port}/f/i{k}`:
    its READY models, and its health (in a child process: the instances' work is not the front
    end's)."""
    bodies = {
        (fleet, k): json.dumps(
            [{"name": n, "version": "1", "state": "READY", "reason": ""} for n in names]
        ).encode()
        for fleet, instances in ready.items()
        for k, names in instances.items()
    }

    async def index(request: web.Request) -> web.Response:
        """As `mark worker` answers it: 304 to the tag of the body the caller read last."""
        await request.read()
        body = bodies[request.match_info["f"], int(request.match_info["k"])]
        etag = index_etag(body)
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=body, content_type="application/json", headers={"ETag": etag})

    async def ready(_: web.Request) -> web.Response:
        return web.json_response({"ready": True})

    app = web.Application()
    app.router.add_post("/{f}/i{k}/v2/repository/index", index)
    app.router.add_get("/{f}/i{k}/v2/health/ready", ready)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def _index_server(ready: Ready) -> tuple[multiprocessing.Process, str]:
    port = free_port()
    child = multiprocessing.get_context("fork").Process(
        target=_serve_indexes, args=(ready, port), daemon=True
    )
    child.start()
    deadline = time.monotonic() + 30
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
        if time.monotonic() > deadline:
            raise RuntimeError("the index server did not start")
        time.sleep(0.05)
    return child, f"http://127.0.0.1:{port}"


async def _longest_stall() -> float:
    """Until cancelled: the longest the event loop went without running this task (a 1 ms
    tick), in seconds: what a request arriving then would have waited before any of it ran."""
    longest = 0.0
    last = time.perf_counter()
    try:
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            longest = max(longest, now - last)
            last = now
    except asyncio.CancelledError:
        return max(longest, time.perf_counter() - last)


class Setup:
    """A fleet of `names` on INSTANCES instances, synced from its own database."""

    def __init__(self, names: list[str], url: str) -> None:
        self.names = names
        self.url = url  # its instances' indexes are at {url}/i{k}

    async def start(self, tmp: Path) -> tuple[float, float]:
        """The first sync until every instance is routed to, and the longest stall of the
        event loop meanwhile (seconds)."""
        self.db = await Database.open(f"sqlite+aiosqlite:///{tmp / 'bench.db'}")
        await self.db.create_models([model(n, slo_ms=1000.0) for n in self.names])
        for k in range(INSTANCES):
            await self.db.save_instance(running(f"i{k}", f"{self.url}/i{k}", self.names))
        pool = LocalFunctionPool(ServerlessConfig(concurrency=8))
        self.fleet = Fleet(BatchingConfig(), spill=SpillMonitor(pool, SpillConfig()))
        stalls = asyncio.create_task(_longest_stall())
        started = time.perf_counter()
        await self.sync()
        await self.fleet.admitted(120)  # each new instance's first health check
        took_s = time.perf_counter() - started
        stalls.cancel()
        return took_s, await stalls

    async def sync(self) -> None:
        """One `Fleet.sync_forever` round."""
        models = await self.db.list_models()
        instances = await self.db.list_instances(live_only=True)
        self.fleet.set_models(models)
        self.fleet.set_instances(instances)
        await self.fleet.refresh_residency()

    def pick(self, stream: list[str]) -> float:
        """Seconds to pick an instance for each of `stream`: the model's routes, then the
        smooth weighted round-robin among the instances holding it (routing proper)."""
        models = self.fleet._models
        started = time.perf_counter()
        for name in stream:
            models[name].router.pick()
        return time.perf_counter() - started

    def route(self, stream: list[str]) -> float:
        """Seconds to route `stream` as `Fleet.infer` does before awaiting the answer."""
        fleet = self.fleet
        loop = asyncio.get_running_loop()
        request = InferRequest((Tensor.of("input", np.zeros((1, 16), dtype=np.float32)),))
        started = time.perf_counter()
        for name in stream:
            now = fleet.now_s()
            q = QueuedRequest(name, request, now, now + 1.0, loop.create_future())
            q.give_up_s = now + 30.0
            fleet._route(q, wake=False)
        took_s = time.perf_counter() - started
        for name in set(stream):  # nothing is sent: empty the queues for the next block
            for link in fleet._models[name].links.values():
                if link.made is not None:  # a batcher is made when first used
                    link.made.pending.clear()
        started = time.perf_counter()
        fleet._queued_models()  # the spill watch's pass over the models they queued on
        return took_s + time.perf_counter() - started

    async def close(self) -> None:
        await self.fleet.close()
        await self.db.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000, help="requests per round")
    parser.add_argument("--rate", type=float, default=1000.0, help="req/s to amortize syncs at")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    names = [f"m{i:04d}" for i in range(MODELS)]
    ready: dict[int, list[str]] = {k: [] for k in range(INSTANCES)}
    for i, name in enumerate(names):
        for k in _holders(i):
            ready[k].append(name)
    one = {k: ["m0000"] for k in range(INSTANCES)}
    child, url = _index_server({"many": ready, "one": one})
    weights = np.arange(1, MODELS + 1, dtype=float) ** -1.1
    ranks = np.random.default_rng(19).choice(MODELS, size=args.requests, p=weights / weights.sum())
    streams = {"1000 models": [names[r] for r in ranks], "1 model": ["m0000"] * args.requests}
    setups = {"1000 models": Setup(names, f"{url}/many"), "1 model": Setup(["m0000"], f"{url}/one")}
    print(f"# bench_routing: {machine()}; {INSTANCES} instances, {args.rounds} rounds of "
          f"{args.requests} requests; load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        try:
            first = {}
            for label, setup in setups.items():
                (Path(tmp) / label.replace(" ", "-")).mkdir()
                first[label] = await setup.start(Path(tmp) / label.replace(" ", "-"))
            await asyncio.sleep(0.5)  # the batchers' tasks start
            gc.collect()  # the set-up's garbage is not the measurement's
            pick_us: dict[str, list[float]] = {label: [] for label in setups}
            route_us: dict[str, list[float]] = {label: [] for label in setups}
            sync_ms: dict[str, list[float]] = {label: [] for label in setups}
            for _ in range(args.rounds):  # interleaved: a slow spell falls on both
                for label, setup in setups.items():
                    pick_us[label].append(setup.pick(streams[label]) / args.requests * 1e6)
                    took_s = setup.route(streams[label])
                    route_us[label].append(took_s / args.requests * 1e6)
                    started = time.process_time()  # this process's CPU: the front end's
                    await setup.sync()
                    sync_ms[label].append((time.process_time() - started) * 1e3)
                    await asyncio.sleep(0.05)
            per_sync = args.rate * BatchingConfig().sync_interval_s
            print(f"{'fleet':>12} {'pick us/req':>11} {'route us/req':>12} {'sync ms':>8} "
                  f"{'sync us/req':>11} {'route+sync':>10} {'first sync s':>12} "
                  f"{'stall s':>7}")  # fmt: skip
            rows = {}
            for label in setups:
                p, r = statistics.median(pick_us[label]), statistics.median(route_us[label])
                s = statistics.median(sync_ms[label])
                rows[label] = (p, r, r + s * 1e3 / per_sync)
                print(f"{label:>12} {p:>11.2f} {r:>12.2f} {s:>8.2f} {s * 1e3 / per_sync:>11.2f} "
                      f"{rows[label][2]:>10.2f} {first[label][0]:>12.2f} "
                      f"{first[label][1]:>7.2f}")  # fmt: skip
            many, one = rows["1000 models"], rows["1 model"]
            print(f"\n1000 models on {INSTANCES} instances, per request: pick {many[0]:.2f} us, "
                  f"route {many[1]:.2f} us ({many[1] / one[1]:.2f}x one model on them), with the "
                  f"sync at {args.rate:g} req/s {many[2]:.2f} us ({many[2] / one[2]:.2f}x); "
                  f"target under {TARGET_US:g} us: route "
                  f"{'ok' if many[1] < TARGET_US else 'OVER'}, route+sync "
                  f"{'ok' if many[2] < TARGET_US else 'OVER'}")  # fmt: skip
        finally:
            for setup in setups.values():
                await setup.close()
            child.terminate()
            child.join()


if __name__ == "__main__":
    asyncio.run(main())
