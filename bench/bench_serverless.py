"""The local function pool's latencies, measured side by side in one run: a cold start (fresh
sandbox process + model load), a warm invocation called directly on the pool, and a warm
invocation through the Lambda Invoke API with boto3 (the path front-end processes take). Prints
milliseconds and the ratios the spill rule depends on (cold / warm, Invoke API / direct), plus
what Lambda would bill per million warm requests at the configured memory size.

    python bench/bench_serverless.py [--requests 200] [--rows 1] [--memory-mb 3008]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from mark.core.config import ServerlessConfig
from mark.core.protocol import InferRequest, Tensor
from mark.core.types import BackendSpec, Model, Slo
from provisioner.adapters.serverless import InvokeServer, LambdaPool, LocalFunctionPool, spill_event

MODEL = Model(name="demo", slo=Slo(latency_ms=500, percentile=0.98), backend=BackendSpec())


async def timed_ms(pool: LocalFunctionPool | LambdaPool, event: dict[str, object]) -> float:
    started = time.perf_counter()
    await pool.invoke(event)
    return (time.perf_counter() - started) * 1000.0


async def run(requests: int, rows: int, memory_mb: int) -> None:
    config = ServerlessConfig(concurrency=1, memory_mb=memory_mb)
    x = np.random.default_rng(1).normal(size=(rows, 16)).astype(np.float32)
    event = spill_event(MODEL, InferRequest(inputs=(Tensor.of("input", x),)))
    pool = LocalFunctionPool(config)
    server = InvokeServer(pool)
    url = await server.start()
    remote = LambdaPool(config, endpoint_url=url, unsigned=True)
    try:
        cold = await pool.invoke(event)
        direct = [await timed_ms(pool, event) for _ in range(requests)]
        via_api = [await timed_ms(remote, event) for _ in range(requests)]
        warm = await pool.invoke(event)
    finally:
        await remote.close()
        await server.close()
        await pool.close()
    direct_p50, api_p50 = statistics.median(direct), statistics.median(via_api)
    print(f"requests per path: {requests}, rows per request: {rows}, memory: {memory_mb} MB")
    print(f"cold start (spawn + load):     {cold.init_ms:9.1f} ms")
    print(f"warm, direct p50 / p99:        {direct_p50:9.2f} / {np.percentile(direct, 99):.2f} ms")
    print(f"warm, Invoke API p50 / p99:    {api_p50:9.2f} / {np.percentile(via_api, 99):.2f} ms")
    print(f"cold / warm-direct p50:        {cold.init_ms / direct_p50:9.1f}x")
    print(f"Invoke API / direct p50:       {api_p50 / direct_p50:9.2f}x")
    print(
        f"Lambda bill per 1 M warm calls: ${warm.cost_usd * 1e6:8.2f} "
        f"(billed {warm.billed_ms:.0f} ms each)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--memory-mb", type=int, default=3008)
    args = parser.parse_args()
    asyncio.run(run(args.requests, args.rows, args.memory_mb))
    return 0


if __name__ == "__main__":
    sys.exit(main())
