"""The internal request and response that every wire format is translated to, and the check of
a request against the model's declared inputs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from mark.core.protocol.arrays import DATATYPE_OF, as_array
from mark.core.protocol.errors import ProtocolError

__all__ = [
    "Tensor",
    "TensorMeta",
    "RequestedOutput",
    "InferRequest",
    "InferResponse",
    "TfFormat",
    "validate",
]


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
                datatype = DATATYPE_OF.get(arr.dtype, "FP32")
        return cls(name, datatype, as_array(array, datatype, name))


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


def validate(request: InferRequest, inputs: Sequence[TensorMeta]) -> None:
    """Check a request against the model's declared inputs: every input known, present, of the
    declared datatype and shape (-1 matches any size), and none empty: a batch of no rows is
    nothing to run, and joined to others it would count as one row (`batch_size(...) or 1`).
    Raises ProtocolError (400)."""
    for t in request.inputs:
        if t.array.size == 0:
            raise ProtocolError(f"input {t.name!r} is empty (shape {list(t.shape)})", t.name)
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
