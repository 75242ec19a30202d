"""What a request that finds no capacity gets (issue 18, item 2): by default it waits, past its
SLO deadline, for an instance or a pool slot until `batching.queue_timeout_s`, then a 503 that
says so; with `batching.shed_late` (opt-in load shedding) it is answered 429 with Retry-After
at its deadline instead. In-process fleets, a real `mark worker` subprocess, and a real front
end for the HTTP status and header."""

from __future__ import annotations

import asyncio

import aiohttp
import numpy as np
import pytest

from frontend.answers import Answer, Shed, Unavailable
from frontend.fleet import Fleet
from mark.adapters.db import Database
from mark.core.config import BatchingConfig, Config
from mark.core.protocol import InferRequest, Tensor
from tests.conftest import free_port
from tests.dataplane import front_end, model, running, workers

SLO_MS = 50.0
BODY = {"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]}


def _request() -> InferRequest:
    return InferRequest((Tensor.of("input", np.zeros((1, 16), dtype=np.float32)),))


async def test_a_request_waits_past_its_deadline_for_an_instance_then_times_out() -> None:
    fleet = Fleet(BatchingConfig(queue_timeout_s=1.0))
    fleet.set_models([model("demo", slo_ms=SLO_MS)])
    try:
        async with workers(["--model", "demo=builtin:mlp"]) as [w]:
            waiting = asyncio.ensure_future(fleet.infer("demo", _request()))
            await asyncio.sleep(5 * SLO_MS / 1000.0)  # its deadline passes with no instance
            assert not waiting.done()
            fleet.set_instances([running("i-1", w.endpoint)])  # the replacement joins
            answer = await waiting
            assert isinstance(answer, Answer) and answer.path == "instance"
        fleet.set_instances([])
        with pytest.raises(Unavailable) as refused:  # none ever comes: 503 at the timeout
            await fleet.infer("demo", _request())
        assert not isinstance(refused.value, Shed) and refused.value.status == 503
        assert "batching.queue_timeout_s" in refused.value.reason
    finally:
        await fleet.close()


async def test_shedding_answers_429_with_retry_after_at_the_deadline(tmp_path: object) -> None:
    config = Config.model_validate(
        {
            "server": {"port": free_port()},
            "database": {"url": f"sqlite+aiosqlite:///{tmp_path}/mark.db"},
            "spill": {"enabled": False},
            "batching": {"shed_late": True, "shed_retry_after_s": 2},
        }
    )
    db = await Database.open(config.database.url)
    try:
        await db.create_model(model("demo", slo_ms=SLO_MS))
    finally:
        await db.close()
    async with front_end(config) as app:
        while not app.ctx.fleet.models():
            await asyncio.sleep(0.05)
        url = f"http://127.0.0.1:{config.server.port}/v2/models/demo/infer"
        async with aiohttp.ClientSession() as session, session.post(url, json=BODY) as r:
            body = await r.json()
            assert r.status == 429, body
            assert r.headers["Retry-After"] == "2"
            assert "batching.shed_late" in body["error"]
