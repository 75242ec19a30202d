"""TensorFlow Serving REST `:predict` (`tensorflow.org/tfx/serving/api_rest`): `instances`
(row) and `inputs` (columnar) requests, answered with `predictions` and `outputs`; BYTES as
strings or `{"b64": ...}`."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mark.core.protocol.arrays import as_array
from mark.core.protocol.errors import BackendError, ProtocolError
from mark.core.protocol.json_codec import dumps, load_object
from mark.core.protocol.messages import InferRequest, InferResponse, Tensor, TensorMeta, TfFormat

__all__ = ["parse_tf_request", "encode_tf_request", "parse_tf_response", "encode_tf_response"]


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
    arr = as_array(value, meta.datatype, meta.name)
    if arr.ndim == 0:
        raise ProtocolError(f"input {meta.name!r}: needs a batch dimension", meta.name)
    return Tensor(meta.name, meta.datatype, arr)


def _meta_for(name: str, value: Any, inputs: Mapping[str, TensorMeta]) -> TensorMeta:
    meta = inputs.get(name)
    return meta if meta is not None else _infer_meta(value, name)


def _single(inputs: Sequence[TensorMeta], field: str) -> str:
    """The name an unnamed tensor (rows of plain values, or one unnamed column) feeds: the
    model's one input, `input` when the inputs are not known."""
    if len(inputs) > 1:
        names = ", ".join(repr(m.name) for m in inputs)
        where = "each row of 'instances'" if field == "instances" else "'inputs'"
        raise ProtocolError(
            f"the model takes {len(inputs)} inputs ({names}): {where} must be an object naming them"
        )
    return inputs[0].name if inputs else "input"


def parse_tf_request(
    body: bytes, inputs: Sequence[TensorMeta] = ()
) -> tuple[InferRequest, TfFormat]:
    """Parse a TF Serving `:predict` body into the internal request. `inputs` (the model's
    metadata, when known) gives each input's datatype and names the unnamed one, whatever its
    name, of a model of one input; a model of several takes only named ones (a ProtocolError,
    400, otherwise)."""
    doc = load_object(body)
    known = {m.name: m for m in inputs}
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
            tensors = [_tf_tensor(rows, _meta_for(_single(inputs, "instances"), rows, known))]
        fmt: TfFormat = "instances"
    else:
        columns = doc["inputs"]
        if isinstance(columns, dict) and set(columns) != {"b64"}:
            tensors = [_tf_tensor(v, _meta_for(n, v, known)) for n, v in columns.items()]
        else:
            tensors = [_tf_tensor(columns, _meta_for(_single(inputs, "inputs"), columns, known))]
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
    return dumps(doc)


def encode_tf_request(request: InferRequest) -> bytes:
    """The columnar `:predict` body sent to a TF Serving instance."""
    return dumps({"inputs": {t.name: _tf_value(t) for t in request.inputs}})


def parse_tf_response(body: bytes, output_names: Sequence[str] = ()) -> InferResponse:
    """An instance's columnar (`outputs`) or row (`predictions`) answer as tensors."""
    try:
        doc = load_object(body)
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
        return as_array(value, "BYTES", "output")
    return np.asarray(value)
