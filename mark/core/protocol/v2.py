"""KServe v2 / Open Inference Protocol, REST (`kserve/open-inference-protocol`,
`required_api.md`): tensors as `name`/`shape`/`datatype`/`data`, data row-major flattened or
nested, or in the binary part. A v2 JSON request keeps its body (`InferRequest.raw`) so that a
batch of one is forwarded without being encoded again."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mark.core.protocol.arrays import as_array, parse_shape, shaped
from mark.core.protocol.binary import decode_binary, encode_binary, split_body
from mark.core.protocol.errors import BackendError, ProtocolError
from mark.core.protocol.json_codec import dumps
from mark.core.protocol.messages import InferRequest, InferResponse, RequestedOutput, Tensor

__all__ = ["parse_v2_request", "encode_v2_request", "parse_v2_response", "encode_v2_response"]


def _json_data(tensor: Tensor) -> Any:
    """The tensor's flattened data for `dumps`: a contiguous array (orjson writes numeric
    arrays natively, float32 in its shortest exact form), a list for BYTES."""
    flat = tensor.array.reshape(-1)
    if tensor.datatype == "BYTES":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat]
    if tensor.datatype == "FP16":
        flat = flat.astype(np.float32)
    return np.ascontiguousarray(flat)


def _parse_tensors(raw: Any, rest: bytes, what: str) -> tuple[list[Tensor], int]:
    if not isinstance(raw, list):
        raise ProtocolError(f"'{what}' must be a list")
    tensors: list[Tensor] = []
    offset = 0
    for item in raw:
        if not isinstance(item, dict):
            raise ProtocolError(f"each of '{what}' must be an object")
        name, datatype = item.get("name"), item.get("datatype")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise ProtocolError(f"each of '{what}' needs a string 'name' and 'datatype'")
        shape = parse_shape(item.get("shape"), name)
        params = item.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(rest):
                raise ProtocolError(f"input {name!r}: binary_data_size exceeds the body", name)
            arr = decode_binary(rest[offset : offset + size], datatype, name)
            offset += size
        elif "data" in item:
            arr = as_array(item["data"], datatype, name)
        else:
            raise ProtocolError(f"input {name!r}: needs 'data' or binary_data_size", name)
        tensors.append(Tensor(name, datatype, shaped(arr, shape, name)))
    if len(tensors) > 1 and len({t.name for t in tensors}) != len(tensors):
        raise ProtocolError(f"duplicate names in '{what}'")
    return tensors, offset


def parse_v2_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """Parse a v2 infer request body (JSON, or JSON header + binary tensors)."""
    doc, rest = split_body(body, header_length)
    if "inputs" not in doc:
        raise ProtocolError("'inputs' is required")
    inputs, _ = _parse_tensors(doc["inputs"], rest, "inputs")
    if not inputs:
        raise ProtocolError("'inputs' must not be empty")
    requested = doc.get("outputs") or []
    if not isinstance(requested, list):
        raise ProtocolError("'outputs' must be a list")
    outputs: list[RequestedOutput] = []
    for item in requested:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ProtocolError("each of 'outputs' needs a string 'name'")
        params = item.get("parameters") or {}
        binary = params.get("binary_data") if isinstance(params, dict) else None
        outputs.append(RequestedOutput(item["name"], None if binary is None else bool(binary)))
    params = doc.get("parameters") or {}
    binary_output = bool(params.get("binary_data_output")) if isinstance(params, dict) else False
    request_id = None if doc.get("id") is None else str(doc["id"])
    forwardable = header_length is None and all(t.datatype != "BYTES" for t in inputs)
    return InferRequest(
        tuple(inputs), tuple(outputs), request_id, binary_output, body if forwardable else None
    )


def _encode_doc(doc: dict[str, Any], chunks: list[bytes]) -> tuple[bytes, int | None]:
    head = dumps(doc)
    if not chunks:
        return head, None
    return head + b"".join(chunks), len(head)


def _tensor_docs(
    tensors: Sequence[Tensor], binary: set[str], chunks: list[bytes]
) -> list[dict[str, Any]]:
    docs = []
    for t in tensors:
        doc: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        if t.name in binary:
            chunk = encode_binary(t)
            chunks.append(chunk)
            doc["parameters"] = {"binary_data_size": len(chunk)}
        else:
            doc["data"] = _json_data(t)
        docs.append(doc)
    return docs


def encode_v2_request(request: InferRequest, *, binary: bool = False) -> tuple[bytes, int | None]:
    """Body (and header length when binary) of a v2 infer request, as sent to an instance: the
    client's own JSON body when the request has one (`raw`) and binary is not asked for."""
    if request.raw is not None and not binary:
        return request.raw, None
    chunks: list[bytes] = []
    names = {t.name for t in request.inputs} if binary else set()
    doc: dict[str, Any] = {"inputs": _tensor_docs(request.inputs, names, chunks)}
    if request.id is not None:
        doc["id"] = request.id
    if request.outputs:
        doc["outputs"] = [{"name": o.name} for o in request.outputs]
    if binary:
        doc["parameters"] = {"binary_data_output": True}
    return _encode_doc(doc, chunks)


def parse_v2_response(body: bytes, header_length: int | None = None) -> InferResponse:
    """Parse an instance's v2 infer response; raises BackendError when it is not one."""
    try:
        doc, rest = split_body(body, header_length)
        outputs, _ = _parse_tensors(doc.get("outputs"), rest, "outputs")
    except ProtocolError as exc:
        raise BackendError(f"invalid v2 response: {exc.message}") from exc
    return InferResponse(
        tuple(outputs), str(doc.get("model_name", "")), doc.get("model_version"), doc.get("id")
    )


def encode_v2_response(
    response: InferResponse, binary: set[str] | None = None
) -> tuple[bytes, int | None]:
    """Body (and header length when any output is binary) of a v2 infer response."""
    chunks: list[bytes] = []
    doc: dict[str, Any] = {"model_name": response.model_name}
    if response.model_version is not None:
        doc["model_version"] = response.model_version
    if response.id is not None:
        doc["id"] = response.id
    doc["outputs"] = _tensor_docs(response.outputs, binary or set(), chunks)
    return _encode_doc(doc, chunks)
