"""What the front end calls to spill: the v2 request as the handler's event, the answer parsed
back as a v2 response with the invocation's cost, and the pool a front-end process uses.
"""

from __future__ import annotations

import json
from typing import Any

from mark.core.config import ServerlessConfig
from mark.core.errors import CloudError
from mark.core.protocol import InferRequest, InferResponse, encode_v2_request, parse_v2_response
from mark.core.types import Model
from provisioner.adapters.serverless.lambda_pool import LambdaPool
from provisioner.adapters.serverless.pool import (
    FunctionError,
    InputRejected,
    Invocation,
    ServerlessPool,
)

__all__ = ["spill_event", "infer", "build_pool"]


def spill_event(model: Model, request: InferRequest) -> dict[str, Any]:
    """The handler's event for one spilled request (the v2 request as JSON)."""
    body, _ = encode_v2_request(request)
    return {"model": model.name, "artifact": model.backend.artifact, "request": json.loads(body)}


async def infer(
    pool: ServerlessPool, model: Model, request: InferRequest
) -> tuple[InferResponse, Invocation]:
    """Answer `request` through the pool; the invocation carries the cost for the ledger.
    Raises InputRejected when the function found the request does not fit the model."""
    invocation = await pool.invoke(spill_event(model, request))
    rejected = invocation.result.get("rejected")
    if rejected:
        raise InputRejected(str(rejected), invocation)
    response = invocation.result.get("response")
    if not isinstance(response, dict):
        raise FunctionError("Mark.NoResponse", "the handler returned no v2 response")
    return parse_v2_response(json.dumps(response).encode()), invocation


def build_pool(
    config: ServerlessConfig, *, local_endpoint_url: str | None = None
) -> ServerlessPool | None:
    """The pool a front-end process uses: Lambda itself, or the control plane's local pool
    through its Invoke API at `local_endpoint_url`; None when spill is off."""
    if config.provider == "none":
        return None
    if config.provider == "local":
        if local_endpoint_url is None:
            raise CloudError("the local serverless pool needs its Invoke API URL")
        return LambdaPool(config, endpoint_url=local_endpoint_url, unsigned=True)
    return LambdaPool(config)
