"""Triton's binary tensor data extension (`docs/protocol/extension_binary_data.md`): a JSON
header of `Inference-Header-Content-Length` bytes, then raw little-endian tensors in order, their
sizes in `parameters.binary_data_size`; BYTES elements as a 4-byte little-endian length and the
bytes. `tritonclient.http` uses it by default, so the front end must too."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from mark.core.protocol.arrays import NUMPY_DTYPES
from mark.core.protocol.errors import ProtocolError
from mark.core.protocol.json_codec import load_object
from mark.core.protocol.messages import Tensor

__all__ = ["HEADER_LENGTH", "parse_header_length", "split_body", "decode_binary", "encode_binary"]

HEADER_LENGTH = "Inference-Header-Content-Length"


def parse_header_length(value: str | None) -> int | None:
    """The `HEADER_LENGTH` header's value as an int (None when the body is plain JSON)."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise ProtocolError(f"{HEADER_LENGTH} must be an integer") from exc


def split_body(body: bytes, header_length: int | None) -> tuple[dict[str, Any], bytes]:
    """The JSON header of a v2 body and the binary tensors after it (none without a header
    length)."""
    if header_length is None:
        return load_object(body), b""
    if header_length < 0 or header_length > len(body):
        raise ProtocolError(f"{HEADER_LENGTH} {header_length} is outside the body")
    return load_object(body[:header_length]), body[header_length:]


def decode_binary(chunk: bytes, datatype: str, name: str) -> np.ndarray:
    if datatype != "BYTES":
        dtype = NUMPY_DTYPES.get(datatype)
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


def encode_binary(tensor: Tensor) -> bytes:
    if tensor.datatype != "BYTES":
        arr = tensor.array
        return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    parts = []
    for item in tensor.array.reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)
