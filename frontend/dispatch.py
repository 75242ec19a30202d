"""Sending one batch to one instance and answering its requests (DESIGN.md, "The flow of
data" 2): the batch leaves as one call over the pooled client (mark/adapters/backends.py) and
its answer is split back per request.

A v2 request alone in its batch, as the client sent it, is forwarded as it came and its answer
passed back unparsed (`Answer.body`). A call the instance rejects (4xx) is the caller's mistake:
with several requests in the batch each is sent alone on the same instance to find the one at
fault. A call that fails (connection refused or reset, timeout, 5xx) goes to `failed`, which
ejects the instance and re-routes the batch. An instance that answers it does not have the model
(`ModelNotServed`: 404, or 503 with Retry-After) has failed for this model alone: the batch goes
to `failed` too, which tells the two apart by the error's type.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from frontend import metrics
from frontend.answers import Answer
from frontend.batcher import QueuedRequest, answer_once
from frontend.links import Link, ModelRoutes
from mark.adapters.backends import (
    BackendClient,
    BackendRejected,
    BackendUnavailable,
    ModelNotServed,
)
from mark.core.protocol import BackendError, InferResponse, concat, split

__all__ = ["InstanceFailed", "dispatch"]

# Called with the requests of a batch whose call failed on the instance, and the error (a
# ModelNotServed when only the model is missing there).
InstanceFailed = Callable[[list[QueuedRequest], Exception], None]


async def dispatch(
    client: BackendClient,
    routes: ModelRoutes,
    link: Link,
    batch: list[QueuedRequest],
    failed: InstanceFailed,
    now_s: float,
) -> None:
    """Send the live requests of `batch` to `link` as one call and answer each of them (or hand
    them to `failed`); `now_s` is the fleet's clock, for the queue-time metric."""
    live = [q for q in batch if not q.done]
    if not live:
        return
    name = routes.model.name
    queue_time = metrics.child(metrics.QUEUE_TIME, name)
    for q in live:
        metrics.observe(queue_time, now_s - q.arrival_s)
    metrics.observe(metrics.child(metrics.BATCH_SIZE, name), len(live))
    inflight = metrics.child(metrics.INSTANCE_INFLIGHT, name, link.id)
    metrics.add(inflight, len(live))
    sent = time.monotonic()
    protocol = routes.model.backend.protocol
    forward = live[0].request.raw if len(live) == 1 else None
    if protocol != "kserve-v2" or routes.backend_name != name:
        forward = None
    try:
        if forward is not None:
            q = live[0]
            body, header_length = await client.infer_v2_raw(link.endpoint, name, forward)
            answer_once(
                q, Answer(None, "instance", link.id, body=body, header_length=header_length)
            )
            return
        response = await client.infer(
            link.endpoint,
            protocol,
            routes.backend_name,
            concat([q.request for q in live]),
            [m.name for m in routes.inputs],
        )
        parts = split(response, [q.rows for q in live])
    except BackendRejected as exc:
        rejected: BackendRejected | None = exc
    except ModelNotServed as exc:  # the instance is fine: not an instance error
        failed(live, exc)
        return
    except (BackendUnavailable, BackendError) as exc:
        metrics.child(metrics.INSTANCE_ERRORS, name, link.id).inc()
        failed(live, exc)
        return
    else:
        rejected = None
    finally:
        metrics.add(inflight, -len(live))
        # The call's own time in service (a rejected batch's retries alone count for themselves).
        metrics.add(metrics.child(metrics.INSTANCE_BUSY, name, link.id), time.monotonic() - sent)
    if rejected is not None:
        if len(live) == 1:
            answer_once(live[0], rejected)
        else:  # find the request at fault: each alone, on the same instance
            await asyncio.gather(
                *(dispatch(client, routes, link, [q], failed, now_s) for q in live)
            )
        return
    for q, part in zip(live, parts, strict=True):
        answer_once(
            q,
            Answer(
                InferResponse(part.outputs, name, part.model_version, q.request.id),
                "instance",
                link.id,
            ),
        )
