"""Tensor data as numpy arrays: the v2 datatypes, and JSON data checked and converted (strings
and `{"b64": ...}` for BYTES, numbers of the declared type, a shape that holds them)."""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from mark.core.protocol.errors import ProtocolError

__all__ = ["NUMPY_DTYPES", "DATATYPE_OF", "MAX_ELEMENTS", "as_array", "parse_shape", "shaped"]

NUMPY_DTYPES: Mapping[str, np.dtype[Any]] = {
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
DATATYPE_OF = {dtype: name for name, dtype in NUMPY_DTYPES.items() if name != "BYTES"}
MAX_ELEMENTS = 1 << 28


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


def as_array(data: Any, datatype: str, name: str) -> np.ndarray:
    dtype = NUMPY_DTYPES.get(datatype)
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
    if arr.dtype == object or arr.dtype.kind in "USV" or (arr.dtype.kind == "b" != dtype.kind):
        raise ProtocolError(f"input {name!r}: {datatype} data must be numbers", name)
    if dtype.kind in "iu" and arr.dtype.kind == "f":
        raise ProtocolError(f"input {name!r}: {datatype} data must be integers", name)
    if dtype.kind == "b" and arr.dtype.kind != "b":
        raise ProtocolError(f"input {name!r}: BOOL data must be true/false", name)
    if dtype.kind in "iu" and arr.size and not _fits(arr, dtype):
        raise ProtocolError(f"input {name!r}: values do not fit {datatype}", name)
    try:
        with np.errstate(over="raise"):  # a finite number past FP16's or FP32's range
            return arr.astype(dtype)
    except (OverflowError, ValueError, FloatingPointError) as exc:
        raise ProtocolError(f"input {name!r}: values do not fit {datatype}", name) from exc


def _fits(arr: np.ndarray, dtype: np.dtype[Any]) -> bool:
    """Whether integers `arr` lie in `dtype`'s range: numpy's cast would wrap them silently
    (300 as UINT8 is 44), so a value the model never received would be answered."""
    info = np.iinfo(dtype)
    return bool(info.min <= arr.min() and arr.max() <= info.max)


def parse_shape(raw: Any, name: str) -> tuple[int, ...]:
    # JSON integers only (type, not isinstance: true/false are not dimensions)
    if type(raw) is not list or not all(type(d) is int and d >= 0 for d in raw):
        raise ProtocolError(f"input {name!r}: shape must be a list of non-negative integers", name)
    if math.prod(raw) > MAX_ELEMENTS:
        raise ProtocolError(f"input {name!r}: tensor too large", name)
    return tuple(raw)


def shaped(arr: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """`arr` (any nesting) as `shape`, which must hold exactly its values."""
    if arr.shape == shape:
        return arr
    if arr.size != math.prod(shape):
        raise ProtocolError(
            f"input {name!r}: {arr.size} values do not fill shape {list(shape)}", name
        )
    return arr.reshape(shape)
