"""What a model artifact declares: the v2 signature (platform, inputs, outputs) of each kind
`mark worker` loads, and the version token of a `--model` artifact's file.

One reader for every caller: the worker's loaders (mark/apps/worker/loaders.py) build the
served model from the runtime objects opened here, and the front end answers
`GET /v2/models/{m}` and checks requests with `read_signature` when no instance runs the model
(frontend/model_metadata.py), so the metadata a client sees before the first instance is the
metadata that instance reports. An artifact spec is `builtin:mlp`, `onnx:PATH`, `sklearn:PATH`
or `torchscript:PATH`. Opening one is blocking file I/O (onnxruntime parses the graph, joblib
unpickles the estimator): an event loop calls it in a thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mark.adapters.model_store import StoredModel
from mark.core.errors import InvalidValue
from mark.core.protocol import TensorMeta

__all__ = [
    "BUILTIN_MLP",
    "MISSING",
    "TORCHSCRIPT",
    "Signature",
    "artifact_file",
    "onnx_session",
    "onnx_signature",
    "read_signature",
    "sklearn_estimator",
    "sklearn_signature",
    "spec_entry",
]

_ONNX_TYPES = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(float16)": "FP16",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(int8)": "INT8",
    "tensor(uint8)": "UINT8",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}
_KINDS = ("builtin", "onnx", "sklearn", "torchscript")
MISSING = "missing"  # the version token of an artifact file that is not there


@dataclass(frozen=True, slots=True)
class Signature:
    """An artifact's v2 metadata, less the served name and version (the batch on dimension 0)."""

    platform: str
    inputs: tuple[TensorMeta, ...]
    outputs: tuple[TensorMeta, ...]


BUILTIN_MLP = Signature(
    "mark_builtin_mlp",
    (TensorMeta("input", "FP32", (-1, 16)),),
    (TensorMeta("output", "FP32", (-1, 4)),),
)
# A TorchScript module declares no signature: one FP32 matrix in, one out.
TORCHSCRIPT = Signature(
    "pytorch_torchscript",
    (TensorMeta("input", "FP32", (-1, -1)),),
    (TensorMeta("output", "FP32", (-1, -1)),),
)


def artifact_file(artifact: str) -> tuple[str, Path | None]:
    """(kind, file) of an artifact spec, the file None for `builtin:mlp`. Raises InvalidValue
    naming what is wrong: an unknown kind or builtin, a file that does not exist."""
    kind, _, ref = artifact.partition(":")
    if kind not in _KINDS:
        raise InvalidValue(
            "model",
            f"unknown artifact kind {kind!r} in {artifact!r} "
            "(use builtin:mlp, onnx:PATH, sklearn:PATH or torchscript:PATH)",
        )
    if kind == "builtin":
        if ref != "mlp":
            raise InvalidValue("model", f"unknown builtin model {ref!r} (known: mlp)")
        return kind, None
    path = Path(ref)
    if not path.is_file():
        raise InvalidValue("model", f"artifact file {path} does not exist")
    return kind, path


def spec_entry(name: str, artifact: str) -> StoredModel:
    """The store entry of an artifact spec's file (one stat): its version token is the file's
    mtime and size, as a local store's (MISSING when there is no file: the loader says why),
    and `builtin:mlp`'s is the spec itself."""
    kind, _, ref = artifact.partition(":")
    if kind == "builtin":
        return StoredModel(name, ref, kind, 0, artifact)
    try:
        st = Path(ref).stat()
    except OSError:
        return StoredModel(name, ref, kind, 0, MISSING)
    return StoredModel(name, ref, kind, st.st_size, f"{st.st_mtime_ns}-{st.st_size}")


def onnx_session(path: Path) -> Any:
    """An onnxruntime CPU session of one intra-op thread (the worker runs one per executor)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _onnx_meta(node: Any) -> TensorMeta:
    datatype = _ONNX_TYPES.get(node.type)
    if datatype is None:
        raise InvalidValue("model", f"ONNX {node.name!r} has unsupported type {node.type}")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in node.shape)
    return TensorMeta(node.name, datatype, shape)


def onnx_signature(session: Any) -> Signature:
    """The graph's own inputs and outputs (a symbolic dimension is -1)."""
    return Signature(
        "onnxruntime_onnx",
        tuple(_onnx_meta(n) for n in session.get_inputs()),
        tuple(_onnx_meta(n) for n in session.get_outputs()),
    )


def sklearn_estimator(path: Path) -> Any:
    """The fitted estimator a joblib file holds. Raises InvalidValue when it holds none."""
    import joblib

    estimator = joblib.load(path)
    if not hasattr(estimator, "predict") or getattr(estimator, "n_features_in_", None) is None:
        raise InvalidValue("model", f"{path} is not a fitted scikit-learn estimator")
    return estimator


def _label_type(values: np.ndarray) -> str:
    if values.dtype.kind in "iu":
        return "INT64"
    if values.dtype.kind in "OUS":
        return "BYTES"
    return "FP32"


def _input_type(estimator: Any) -> str:
    """The datatype the estimator computes in: FP32 when a fitted floating-point array of it
    (or of a pipeline's step), labels aside, is float32, as scikit-learn fits float32 data in
    float32 where the algorithm allows; else FP64, the float64 that scikit-learn's input check
    turns every other input into (an iris classifier fitted on `load_iris()` takes FP64)."""
    steps = getattr(estimator, "steps", None)
    parts = [step for _, step in steps] if isinstance(steps, list) else [estimator]
    for part in parts:
        for key, value in vars(part).items():
            fitted = key.endswith("_") and key != "classes_" and isinstance(value, np.ndarray)
            if fitted and value.dtype == np.float32:
                return "FP32"
    return "FP64"


def sklearn_signature(estimator: Any) -> Signature:
    """One input `input` [-1, n_features_in_] of the estimator's datatype; `output`, the
    predicted labels (INT64, BYTES or FP32), and with `predict_proba` `probabilities`, FP32
    [-1, classes] (`estimator` as `sklearn_estimator` opened it)."""
    classes = getattr(estimator, "classes_", None)
    label = _label_type(np.asarray(classes)) if classes is not None else "FP32"
    outputs = [TensorMeta("output", label, (-1,))]
    if classes is not None and hasattr(estimator, "predict_proba"):
        outputs.append(TensorMeta("probabilities", "FP32", (-1, len(np.asarray(classes)))))
    inputs = (TensorMeta("input", _input_type(estimator), (-1, int(estimator.n_features_in_))),)
    return Signature("scikit_learn", inputs, tuple(outputs))


def read_signature(artifact: str) -> Signature:
    """The signature the worker serves `artifact` with, read from its file as the worker opens
    it (blocking). Raises InvalidValue (unknown kind, missing file, no fitted estimator) or the
    runtime's own error for a file it cannot parse."""
    kind, path = artifact_file(artifact)
    if path is None:
        return BUILTIN_MLP
    if kind == "onnx":
        return onnx_signature(onnx_session(path))
    if kind == "sklearn":
        return sklearn_signature(sklearn_estimator(path))
    return TORCHSCRIPT
