"""Wire formats of inference: KServe v2 / Open Inference Protocol (JSON and the binary tensor
extension) and TensorFlow Serving REST `:predict`, translated to one internal request.

Shared by the front end (parsing clients, talking to instances) and the reference worker
(`mark.apps.worker`), so that both ends agree byte for byte. Sources:
- Open Inference Protocol, REST: https://github.com/kserve/open-inference-protocol
  (`required_api.md`: tensor `name`/`shape`/`datatype`/`data`, row-major flattened or nested data).
- Binary tensor data extension (Triton `docs/protocol/extension_binary_data.md`): a JSON header of
  `Inference-Header-Content-Length` bytes, then raw tensors in order; `parameters.binary_data_size`
  per input; BYTES elements as 4-byte little-endian length + bytes. `tritonclient.http` uses it by
  default, so the front end must too.
- TF Serving REST (`tensorflow.org/tfx/serving/api_rest`): `instances` (row) and `inputs`
  (columnar) request formats answered with `predictions` and `outputs`; `{"b64": ...}` strings.

Batching (MArk's dynamic batching, DESIGN.md): requests whose inputs agree on names, types and
trailing dimensions are concatenated along dimension 0 (`concat`) and the outputs split back by
each request's batch size (`split`).

Hot path (bench/bench_frontend.py): JSON goes through orjson (about 10x the stdlib's speed on
these small documents), numeric tensors are serialized straight from their arrays, and a v2 JSON
request keeps its body (`InferRequest.raw`) so that a batch of one is forwarded without being
encoded again. Non-finite floats (NaN, Infinity), which orjson cannot write or read, fall back to
the stdlib, whose extension of JSON both ends accept.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, pairwise
from typing import Any, Literal

import numpy as np
import orjson

from mark.core.errors import InvalidValue

__all__ = [
    "ProtocolError",
    "BackendError",
    "HEADER_LENGTH",
    "Tensor",
    "TensorMeta",
    "RequestedOutput",
    "InferRequest",
    "InferResponse",
    "TfFormat",
    "parse_v2_request",
    "encode_v2_request",
    "parse_v2_response",
    "encode_v2_response",
    "parse_tf_request",
    "encode_tf_request",
    "parse_tf_response",
    "encode_tf_response",
    "batch_key",
    "batch_size",
    "concat",
    "split",
    "validate",
]

HEADER_LENGTH = "Inference-Header-Content-Length"

_NUMPY: Mapping[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_DATATYPE_OF = {dtype: name for name, dtype in _NUMPY.items() if name != "BYTES"}
_MAX_ELEMENTS = 1 << 28


class ProtocolError(InvalidValue):
    """The caller's request is malformed or does not fit the model: answered with 400."""

    def __init__(self, message: str, field: str = "request") -> None:
        super().__init__(field, message)


class BackendError(Exception):
    """An instance answered with something that is not a valid response (retryable)."""


@dataclass(frozen=True, slots=True)
class Tensor:
    """A named tensor; BYTES tensors hold `bytes` elements in an object array."""

    name: str
    datatype: str
    array: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        shape: tuple[int, ...] = self.array.shape  # numpy's shape: a tuple of Python ints
        return shape

    @classmethod
    def of(cls, name: str, array: Any, datatype: str | None = None) -> Tensor:
        """A tensor from any array-like, typed from the array unless `datatype` is given."""
        if datatype is None:
            arr = np.asarray(array)
            if arr.dtype.kind in "OUS":
                datatype = "BYTES"
            elif arr.dtype == np.float64:
                datatype = "FP32"
            else:
                datatype = _DATATYPE_OF.get(arr.dtype, "FP32")
        return cls(name, datatype, _as_array(array, datatype, name))


@dataclass(frozen=True, slots=True)
class TensorMeta:
    """A model input or output as metadata describes it (-1 for a variable dimension)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> TensorMeta:
        return cls(str(raw["name"]), str(raw["datatype"]), tuple(int(d) for d in raw["shape"]))


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    binary: bool | None = None


@dataclass(frozen=True, slots=True)
class InferRequest:
    """`raw`: the v2 JSON body this request was parsed from, when it can be forwarded to a v2
    instance as is (no binary part, no BYTES inputs); None for a request built otherwise."""

    inputs: tuple[Tensor, ...]
    outputs: tuple[RequestedOutput, ...] = ()
    id: str | None = None
    binary_output: bool = False
    raw: bytes | None = field(default=None, compare=False, repr=False)

    def binary_names(self, produced: Sequence[str]) -> set[str]:
        """Which produced outputs the client wants as binary tensor data."""
        chosen = {o.name: o.binary for o in self.outputs if o.binary is not None}
        return {n for n in produced if chosen.get(n, self.binary_output)}


@dataclass(frozen=True, slots=True)
class InferResponse:
    outputs: tuple[Tensor, ...]
    model_name: str = ""
    model_version: str | None = None
    id: str | None = None


TfFormat = Literal["instances", "inputs"]


# --- tensors ---------------------------------------------------------------------------------


def _to_bytes(value: Any, name: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, Mapping) and set(value) == {"b64"}:
        try:
            return base64.b64decode(str(value["b64"]), validate=True)
        except binascii.Error as exc:
            raise ProtocolError(f"input {name!r}: invalid base64", name) from exc
    raise ProtocolError(f"input {name!r}: BYTES elements must be strings", name)


def _as_array(data: Any, datatype: str, name: str) -> np.ndarray:
    dtype = _NUMPY.get(datatype)
    if dtype is None:
        raise ProtocolError(f"input {name!r}: unsupported datatype {datatype!r}", name)
    if datatype == "BYTES":
        raw = np.asarray(data, dtype=object)
        flat = [_to_bytes(v, name) for v in raw.reshape(-1)]
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out.reshape(raw.shape)
    if isinstance(data, np.ndarray):
        return data.astype(dtype, copy=False)
    try:
        arr = np.asarray(data)
    except ValueError as exc:  # ragged nesting
        raise ProtocolError(f"input {name!r}: data is not a rectangular array", name) from exc
    if arr.dtype == object or arr.dtype.kind in "USV":
        raise ProtocolError(f"input {name!r}: {datatype} data must be numbers", name)
    if dtype.kind in "iu" and arr.dtype.kind == "f":
        raise ProtocolError(f"input {name!r}: {datatype} data must be integers", name)
    if dtype.kind == "b" and arr.dtype.kind != "b":
        raise ProtocolError(f"input {name!r}: BOOL data must be true/false", name)
    try:
        return arr.astype(dtype)
    except (OverflowError, ValueError) as exc:
        raise ProtocolError(f"input {name!r}: values do not fit {datatype}", name) from exc


def _shape(raw: Any, name: str) -> tuple[int, ...]:
    # JSON integers only (type, not isinstance: true/false are not dimensions)
    if type(raw) is not list or not all(type(d) is int and d >= 0 for d in raw):
        raise ProtocolError(f"input {name!r}: shape must be a list of non-negative integers", name)
    if math.prod(raw) > _MAX_ELEMENTS:
        raise ProtocolError(f"input {name!r}: tensor too large", name)
    return tuple(raw)


def _shaped(arr: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """`arr` (any nesting) as `shape`, which must hold exactly its values."""
    if arr.shape == shape:
        return arr
    if arr.size != math.prod(shape):
        raise ProtocolError(
            f"input {name!r}: {arr.size} values do not fill shape {list(shape)}", name
        )
    return arr.reshape(shape)


def _decode_binary(chunk: bytes, datatype: str, name: str) -> np.ndarray:
    if datatype != "BYTES":
        dtype = _NUMPY.get(datatype)
        if dtype is None:
            raise ProtocolError(f"input {name!r}: unsupported datatype {datatype!r}", name)
        if len(chunk) % dtype.itemsize:
            raise ProtocolError(f"input {name!r}: binary size is not a multiple of {datatype}")
        return np.frombuffer(chunk, dtype=dtype.newbyteorder("<")).astype(dtype)
    items: list[bytes] = []
    pos = 0
    while pos < len(chunk):
        if pos + 4 > len(chunk):
            raise ProtocolError(f"input {name!r}: truncated BYTES element", name)
        (length,) = struct.unpack_from("<I", chunk, pos)
        pos += 4
        if pos + length > len(chunk):
            raise ProtocolError(f"input {name!r}: truncated BYTES element", name)
        items.append(chunk[pos : pos + length])
        pos += length
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def _encode_binary(tensor: Tensor) -> bytes:
    if tensor.datatype != "BYTES":
        arr = tensor.array
        return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    parts = []
    for item in tensor.array.reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def _json_data(tensor: Tensor) -> Any:
    """The tensor's flattened data for `_dumps`: a contiguous array (orjson writes numeric
    arrays natively, float32 in its shortest exact form), a list for BYTES."""
    flat = tensor.array.reshape(-1)
    if tensor.datatype == "BYTES":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat]
    if tensor.datatype == "FP16":
        flat = flat.astype(np.float32)
    return np.ascontiguousarray(flat)


def _loads(data: bytes | str) -> Any:
    """Parse JSON; the stdlib's decoder only for what orjson rejects (NaN, Infinity) and to
    word the error of a malformed body."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def _dumps(doc: Any) -> bytes:
    """Compact JSON of `doc`, whose tensor data may be numpy arrays (`_json_data`). orjson writes
    NaN and Infinity as null, so a body with a null in it (rare: no field here is null) is
    written again by the stdlib, which keeps them."""
    out = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if b"null" not in out:
        return out
    return json.dumps(doc, separators=(",", ":"), default=_tolist).encode()


def _tolist(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# --- KServe v2 -------------------------------------------------------------------------------


def _split_body(body: bytes, header_length: int | None) -> tuple[Any, bytes]:
    if header_length is None:
        head, rest = body, b""
    else:
        if header_length < 0 or header_length > len(body):
            raise ProtocolError(f"{HEADER_LENGTH} {header_length} is outside the body")
        head, rest = body[:header_length], body[header_length:]
    try:
        doc = _loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ProtocolError("body must be a JSON object")
    return doc, rest


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
        shape = _shape(item.get("shape"), name)
        params = item.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(rest):
                raise ProtocolError(f"input {name!r}: binary_data_size exceeds the body", name)
            arr = _decode_binary(rest[offset : offset + size], datatype, name)
            offset += size
        elif "data" in item:
            arr = _as_array(item["data"], datatype, name)
        else:
            raise ProtocolError(f"input {name!r}: needs 'data' or binary_data_size", name)
        tensors.append(Tensor(name, datatype, _shaped(arr, shape, name)))
    if len(tensors) > 1 and len({t.name for t in tensors}) != len(tensors):
        raise ProtocolError(f"duplicate names in '{what}'")
    return tensors, offset


def parse_v2_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """Parse a v2 infer request body (JSON, or JSON header + binary tensors)."""
    doc, rest = _split_body(body, header_length)
    if "inputs" not in doc:
        raise ProtocolError("'inputs' is required")
    inputs, _ = _parse_tensors(doc["inputs"], rest, "inputs")
    if not inputs:
        raise ProtocolError("'inputs' must not be empty")
    outputs: list[RequestedOutput] = []
    for item in doc.get("outputs") or []:
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
    head = _dumps(doc)
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
            chunk = _encode_binary(t)
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
        doc, rest = _split_body(body, header_length)
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


# --- TensorFlow Serving REST -----------------------------------------------------------------


def _infer_meta(value: Any, name: str) -> TensorMeta:
    arr = np.asarray(value, dtype=object)
    sample = arr.reshape(-1)[0] if arr.size else 0.0
    if isinstance(sample, str | dict):
        datatype = "BYTES"
    elif isinstance(sample, bool):
        datatype = "BOOL"
    elif isinstance(sample, int):
        datatype = "INT64"
    else:
        datatype = "FP32"
    return TensorMeta(name, datatype, tuple(-1 for _ in arr.shape))


def _tf_tensor(value: Any, meta: TensorMeta) -> Tensor:
    arr = _as_array(value, meta.datatype, meta.name)
    if arr.ndim == 0:
        raise ProtocolError(f"input {meta.name!r}: needs a batch dimension", meta.name)
    return Tensor(meta.name, meta.datatype, arr)


def _meta_for(name: str, value: Any, inputs: Mapping[str, TensorMeta]) -> TensorMeta:
    meta = inputs.get(name)
    return meta if meta is not None else _infer_meta(value, name)


def parse_tf_request(
    body: bytes, inputs: Sequence[TensorMeta] = ()
) -> tuple[InferRequest, TfFormat]:
    """Parse a TF Serving `:predict` body into the internal request. `inputs` (the model's
    metadata, when known) names the single unnamed input and gives each input's datatype."""
    doc, _ = _split_body(body, None)
    known = {m.name: m for m in inputs}
    single = inputs[0].name if len(inputs) == 1 else "input"
    if ("instances" in doc) == ("inputs" in doc):
        raise ProtocolError("body needs exactly one of 'instances' or 'inputs'")
    tensors: list[Tensor]
    if "instances" in doc:
        rows = doc["instances"]
        if not isinstance(rows, list) or not rows:
            raise ProtocolError("'instances' must be a non-empty list")
        if all(isinstance(r, dict) and set(r) != {"b64"} for r in rows):
            names = list(rows[0])
            if any(list(r) != names and set(r) != set(names) for r in rows):
                raise ProtocolError("every instance must have the same named inputs")
            tensors = [
                _tf_tensor([r[n] for r in rows], _meta_for(n, [r[n] for r in rows], known))
                for n in names
            ]
        else:
            tensors = [_tf_tensor(rows, _meta_for(single, rows, known))]
        fmt: TfFormat = "instances"
    else:
        columns = doc["inputs"]
        if isinstance(columns, dict) and set(columns) != {"b64"}:
            tensors = [_tf_tensor(v, _meta_for(n, v, known)) for n, v in columns.items()]
        else:
            tensors = [_tf_tensor(columns, _meta_for(single, columns, known))]
        fmt = "inputs"
    if not tensors:
        raise ProtocolError("no inputs given")
    return InferRequest(tuple(tensors)), fmt


def _tf_value(tensor: Tensor) -> Any:
    if tensor.datatype == "BYTES":
        flat = [
            v.decode() if v.isascii() else {"b64": base64.b64encode(v).decode()}
            for v in tensor.array.reshape(-1)
        ]
        return np.asarray(flat, dtype=object).reshape(tensor.shape).tolist()
    return tensor.array.tolist()


def encode_tf_response(response: InferResponse, fmt: TfFormat) -> bytes:
    """`predictions` (row format, one entry per instance) or `outputs` (columnar)."""
    if fmt == "inputs":
        if len(response.outputs) == 1:
            doc: dict[str, Any] = {"outputs": _tf_value(response.outputs[0])}
        else:
            doc = {"outputs": {t.name: _tf_value(t) for t in response.outputs}}
    elif len(response.outputs) == 1:
        doc = {"predictions": _tf_value(response.outputs[0])}
    else:
        columns = {t.name: _tf_value(t) for t in response.outputs}
        rows = len(next(iter(columns.values())))
        doc = {"predictions": [{n: v[i] for n, v in columns.items()} for i in range(rows)]}
    return _dumps(doc)


def encode_tf_request(request: InferRequest) -> bytes:
    """The columnar `:predict` body sent to a TF Serving instance."""
    return _dumps({"inputs": {t.name: _tf_value(t) for t in request.inputs}})


def parse_tf_response(body: bytes, output_names: Sequence[str] = ()) -> InferResponse:
    """An instance's columnar (`outputs`) or row (`predictions`) answer as tensors."""
    try:
        doc, _ = _split_body(body, None)
        if "outputs" in doc:
            value = doc["outputs"]
        elif "predictions" in doc:
            value = doc["predictions"]
            if isinstance(value, list) and value and isinstance(value[0], dict):
                value = {n: [row[n] for row in value] for n in value[0]}
        else:
            raise BackendError("TF Serving response has neither 'outputs' nor 'predictions'")
        if isinstance(value, dict):
            tensors = [Tensor.of(n, _as_tf_input(v)) for n, v in value.items()]
        else:
            name = output_names[0] if len(output_names) == 1 else "output"
            tensors = [Tensor.of(name, _as_tf_input(value))]
    except ProtocolError as exc:
        raise BackendError(f"invalid TF Serving response: {exc.message}") from exc
    return InferResponse(tuple(tensors))


def _as_tf_input(value: Any) -> Any:
    arr = np.asarray(value, dtype=object)
    if arr.size and isinstance(arr.reshape(-1)[0], str | dict):
        return _as_array(value, "BYTES", "output")
    return np.asarray(value)


# --- batching --------------------------------------------------------------------------------


def batch_size(request: InferRequest) -> int | None:
    """Rows of this request along dimension 0, or None when it cannot join a batch (a scalar
    input, or inputs that disagree on dimension 0)."""
    sizes = {t.shape[0] if t.shape else None for t in request.inputs}
    if len(sizes) != 1:
        return None
    (size,) = sizes
    return size


def batch_key(request: InferRequest) -> tuple[Any, ...] | None:
    """Requests with equal keys can be concatenated; None for requests that can't batch."""
    if batch_size(request) is None:
        return None
    inputs = tuple(sorted((t.name, t.datatype, t.shape[1:]) for t in request.inputs))
    return inputs, tuple(sorted(o.name for o in request.outputs))


def concat(requests: Sequence[InferRequest]) -> InferRequest:
    """One request holding every request's rows, in order (all must share a batch key)."""
    if len(requests) == 1:
        return requests[0]
    first = requests[0]
    inputs = []
    for tensor in first.inputs:
        parts = [next(t for t in r.inputs if t.name == tensor.name).array for r in requests]
        inputs.append(Tensor(tensor.name, tensor.datatype, np.concatenate(parts, axis=0)))
    return InferRequest(tuple(inputs), first.outputs)


def split(response: InferResponse, sizes: Sequence[int]) -> list[InferResponse]:
    """Cut a batched response back into one response per request (rows `sizes[i]` each)."""
    if len(sizes) == 1:
        return [response]
    total = sum(sizes)
    for t in response.outputs:
        if not t.shape or t.shape[0] != total:
            raise BackendError(
                f"output {t.name!r} has shape {list(t.shape)}, expected {total} rows"
            )
    bounds = list(accumulate(sizes, initial=0))  # Python ints: numpy scalars slice 3x slower
    return [
        InferResponse(
            tuple(Tensor(t.name, t.datatype, t.array[lo:hi]) for t in response.outputs),
            response.model_name,
            response.model_version,
        )
        for lo, hi in pairwise(bounds)
    ]


def validate(request: InferRequest, inputs: Sequence[TensorMeta]) -> None:
    """Check a request against the model's declared inputs: every input known, present, of the
    declared datatype and shape (-1 matches any size). Raises ProtocolError (400)."""
    if not inputs:
        return
    declared = {m.name: m for m in inputs}
    given = {t.name for t in request.inputs}
    for name in given - declared.keys():
        raise ProtocolError(f"unknown input {name!r}; the model takes {sorted(declared)}", name)
    for name in declared.keys() - given:
        raise ProtocolError(f"missing input {name!r}", name)
    for t in request.inputs:
        meta = declared[t.name]
        if t.datatype != meta.datatype:
            raise ProtocolError(
                f"input {t.name!r} must be {meta.datatype}, got {t.datatype}", t.name
            )
        if len(t.shape) != len(meta.shape) or any(
            want not in (-1, got) for want, got in zip(meta.shape, t.shape, strict=True)
        ):
            raise ProtocolError(
                f"input {t.name!r} must have shape {list(meta.shape)}, got {list(t.shape)}",
                t.name,
            )
