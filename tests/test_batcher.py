"""The per-instance batcher: batch formation by size and by timeout, FIFO, rate estimate."""

from __future__ import annotations

import asyncio
from collections import deque

import numpy as np
import pytest

from frontend.batcher import InstanceBatcher, QueuedRequest, RateEstimator
from mark.core.protocol import InferRequest, Tensor
from provisioner.policy.batching import BatchPlan, take_batch


def _queued(loop: asyncio.AbstractEventLoop, rows: int = 1, width: int = 16) -> QueuedRequest:
    req = InferRequest((Tensor.of("input", np.zeros((rows, width), dtype=np.float32)),))
    now = loop.time()
    return QueuedRequest("m", req, now, now + 10.0, loop.create_future())


def test_rate_estimator_tracks_a_steady_stream() -> None:
    est = RateEstimator(window_s=1.0)
    for i in range(2000):
        est.observe(i * 0.01)  # 100 rps
    assert est.rate_rps(19.99) == pytest.approx(100.0, rel=0.01)
    assert est.rate_rps(29.99) < 0.01


async def test_take_batch_respects_size_keys_and_order() -> None:
    loop = asyncio.get_running_loop()
    a, b, odd, c, big = (
        _queued(loop),
        _queued(loop, 2),
        _queued(loop, width=8),
        _queued(loop),
        _queued(loop, 5),
    )
    pending = deque([a, b, odd, c, big])
    assert take_batch(pending, 4) == [a, b, c]
    assert list(pending) == [odd, big]
    assert take_batch(pending, 4) == [odd]
    assert take_batch(pending, 4) == [big]  # the head always goes


async def test_batches_leave_when_full_or_at_the_timeout() -> None:
    loop = asyncio.get_running_loop()
    sent: list[int] = []

    async def dispatch(batch: list[QueuedRequest]) -> None:
        sent.append(len(batch))
        for q in batch:
            q.future.set_result(None)

    batcher = InstanceBatcher(
        plan_for=lambda rate: BatchPlan(size=4, timeout_ms=50.0, service_ms=1.0),
        dispatch=dispatch,
        expire=lambda q: q.future.set_exception(TimeoutError()),
        max_inflight=1,
        window_s=1.0,
        clock=loop.time,
    )
    full = [_queued(loop) for _ in range(4)]
    for q in full:
        batcher.offer(q)
    await asyncio.gather(*(q.future for q in full))
    lone = _queued(loop)
    batcher.offer(lone)
    await lone.future  # leaves alone once its 50 ms timeout expires
    assert sent == [4, 1]
    assert batcher.rate.rate_rps(loop.time()) > 0
    await batcher.close()


async def test_a_backlog_behind_a_busy_instance_leaves_as_one_batch() -> None:
    """A rate that sizes batches at one still sends what queued behind a busy instance together
    (provisioner.policy.batching.backlog_take), not one request per round trip."""
    loop = asyncio.get_running_loop()
    sent: list[int] = []
    release = asyncio.Event()

    async def dispatch(batch: list[QueuedRequest]) -> None:
        sent.append(len(batch))
        await release.wait()
        for q in batch:
            q.future.set_result(None)

    plan = BatchPlan(
        size=1, timeout_ms=900.0, service_ms=101.0, backlog_size=8, budget_ms=1000.0,
        per_request_ms=1.0,
    )  # fmt: skip
    batcher = InstanceBatcher(
        plan_for=lambda rate: plan,
        dispatch=dispatch,
        expire=lambda q: q.future.set_exception(TimeoutError()),
        max_inflight=1,
        window_s=1.0,
        clock=loop.time,
    )
    first = _queued(loop)
    batcher.offer(first)
    await asyncio.sleep(0.01)  # in flight, held until released
    behind = [_queued(loop) for _ in range(3)]
    for q in behind:
        batcher.offer(q)
    await asyncio.sleep(0.01)
    release.set()
    await asyncio.gather(first.future, *(q.future for q in behind))
    assert sent == [1, 3]
    await batcher.close()


async def test_expired_requests_are_handed_back_not_sent() -> None:
    loop = asyncio.get_running_loop()
    expired: list[QueuedRequest] = []

    async def dispatch(batch: list[QueuedRequest]) -> None:
        raise AssertionError("nothing should be sent")

    batcher = InstanceBatcher(
        plan_for=lambda rate: BatchPlan(size=8, timeout_ms=1000.0, service_ms=1.0),
        dispatch=dispatch,
        expire=expired.append,
        max_inflight=1,
        window_s=1.0,
        clock=loop.time,
    )
    late = _queued(loop)
    late.give_up_s = loop.time() - 1.0
    batcher.offer(late)
    for _ in range(20):
        await asyncio.sleep(0.005)
        if expired:
            break
    assert expired == [late]
    assert batcher.take_all() == []
    await batcher.close()
