"""The control loop on the local cloud and the local function pool (real sandbox processes):
each tick warms the pool with the plan's count, the pre-warming rule of
`provisioner.policy.prewarm` (what the running fleet leaves of the forecast, at the pool's
latency, plus one)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from mark.adapters.db import Database
from mark.apps.control.loop import ControlLoop, Schedule
from mark.core.catalog import load_catalog
from mark.core.config import Config, ServerlessConfig
from provisioner.adapters.local_cloud import LocalCloud
from provisioner.adapters.serverless import LocalFunctionPool
from provisioner.policy.prewarm import warm_functions
from traces import Trace

RATE_RPS = 4.0
WARM_MS = 500.0


async def test_each_tick_warms_the_local_pool_with_the_rules_count(tmp_path: Path) -> None:
    model = load_catalog().model("demo").to_model()
    db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'loop.db'}")
    await db.create_model(model)
    config = Config.model_validate(
        {
            "cloud": {"zones": ["us-east-1a"], "launch_overhead_scale": 0.001},
            "forecast": {"predictor": "last"},
            # A budget nothing fits in: no instance is bought, so none serves, and the pool
            # must take the whole forecast.
            "planner": {"budget_per_hour": 1e-6, "spot": False},
            "spill": {"serverless_warm_ms": WARM_MS},
        }
    )
    start = time.time()
    times = np.arange(start - 60.0, start + 3600.0, 60.0)
    known = Schedule(
        Trace(timestamps_s=times, counts=np.full(times.size, RATE_RPS * 60.0), bucket_s=60.0)
    )
    cloud = LocalCloud(config.cloud, models=db.get_model, state_dir=tmp_path / "cloud")
    pool = LocalFunctionPool(ServerlessConfig(concurrency=4, timeout_s=60))
    loop = ControlLoop(
        db, cloud, config, counts=dict, schedule=known, clock=lambda: start, serverless=pool
    )
    try:
        result = await loop.tick()
        assert result is not None and not result.actions
        expected = warm_functions(RATE_RPS, 0.0, WARM_MS)
        assert expected == 3
        assert result.warm_functions == {model.name: expected}
        warm = pool.profile(model.name, default_warm_ms=999.0)
        assert warm.idle_warm == expected  # that many sandboxes hold the model now
    finally:
        await pool.close()
        await cloud.close()
        await db.close()
