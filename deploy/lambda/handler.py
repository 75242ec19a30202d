"""AWS Lambda handler for Mark's serverless spill (MArk's Lambda path, DESIGN.md "Spill").

The same file runs in two places:
- on AWS Lambda, packaged with the `mark` package (container image or zip; see README.md);
- in the local function pool (`provisioner.adapters.serverless.LocalFunctionPool`), where each
  sandbox is
  a fresh spawned process that imports this file, as a Lambda sandbox would.

Event (JSON, at most 6 MB in a synchronous invoke):
    {"model": NAME, "artifact": "builtin:mlp" | "onnx:/path" | "onnx:s3://bucket/key" | ...,
     "request": V2_REQUEST}
or, to warm a sandbox before an expected surge (MArk pings Lambda concurrently):
    {"model": NAME, "artifact": ..., "warm": true}
where V2_REQUEST is a KServe v2 / Open Inference Protocol infer request in JSON.

Result:
    {"response": V2_RESPONSE | null, "rejected": MESSAGE | null, "cold_start": bool,
     "init_ms": float, "handler_ms": float, "max_memory_used_mb": float}
`rejected` says why the request does not fit the model (malformed, or an input of the wrong
name, datatype or shape): the caller's mistake, which an instance answers with 400, so the front
end answers it so too rather than counting a failed function. `cold_start` is true when this
sandbox loaded the model for this call; `init_ms` is what loading took (the model stays loaded
for the sandbox's later calls, as Lambda keeps module state).
Models are loaded with the reference worker's loaders (`mark.apps.worker.loaders.load_model`), so a
spilled request gets the answer an instance would give.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mark.adapters.model_store import SpecObjects
from mark.apps.worker.loaders import ServedModel, load_model
from mark.core.protocol import (
    InferRequest,
    InferResponse,
    ProtocolError,
    Tensor,
    encode_v2_response,
    parse_v2_request,
    validate,
)

_MODELS: dict[tuple[str, str], ServedModel] = {}
# An artifact that is an S3 object (a model registered from an S3 store) is fetched into the
# sandbox's /tmp, through the model store's seam; boto3 finds its endpoint as usual (AWS on
# Lambda, `AWS_ENDPOINT_URL_S3` where the function's environment sets one).
_OBJECTS = SpecObjects()
_FETCHED = Path(tempfile.gettempdir()) / "mark-artifacts"


def _load(name: str, artifact: str) -> ServedModel:
    """The model, loaded as the worker loads it; an S3 object is fetched first."""
    remote = _OBJECTS.find(artifact)
    if remote is None:
        return load_model(name, artifact)
    _FETCHED.mkdir(parents=True, exist_ok=True)
    fetched = _OBJECTS.fetch(name, artifact, _FETCHED / f"{name}{Path(remote[2]).suffix}")
    assert fetched is not None
    return load_model(name, fetched[0])


def _max_memory_used_mb() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0


def _predict(model: ServedModel, name: str, request: InferRequest) -> dict[str, Any]:
    outputs = model.predict({t.name: t.array for t in request.inputs})
    wanted = {o.name for o in request.outputs} or set(outputs)
    datatypes = {m.name: m.datatype for m in model.outputs}
    body, _ = encode_v2_response(
        InferResponse(
            tuple(Tensor.of(n, outputs[n], datatypes.get(n)) for n in outputs if n in wanted),
            model_name=name,
            id=request.id,
        )
    )
    response: dict[str, Any] = json.loads(body)
    return response


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    started = time.perf_counter()
    name, artifact = str(event["model"]), str(event["artifact"])
    key = (name, artifact)
    cold = key not in _MODELS
    init_ms = 0.0
    if cold:
        _MODELS[key] = _load(name, artifact)
        init_ms = (time.perf_counter() - started) * 1000.0
    model = _MODELS[key]
    response: dict[str, Any] | None = None
    rejected: str | None = None
    if not event.get("warm"):
        try:
            request = parse_v2_request(json.dumps(event["request"]).encode())
            validate(request, model.inputs)
        except ProtocolError as exc:
            rejected = exc.message
        else:
            response = _predict(model, name, request)
    return {
        "response": response,
        "rejected": rejected,
        "cold_start": cold,
        "init_ms": init_ms,
        "handler_ms": (time.perf_counter() - started) * 1000.0 - init_ms,
        "max_memory_used_mb": _max_memory_used_mb(),
    }
