"""Model artifacts the reference worker can serve, each behind one small interface.

An artifact spec names the loader and its file: `builtin:mlp` (a numpy MLP with fixed seeded
weights, for demos and tests: input `input` FP32 [-1, 16], output `output` FP32 [-1, 4]),
`onnx:/path/model.onnx` (onnxruntime, CPU), `sklearn:/path/model.joblib` (joblib pickle of a
fitted estimator), `torchscript:/path/model.pt` (only when torch is installed). Every model takes
and returns whole batches (dimension 0), so the worker can execute many requests as one call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mark.core.errors import InvalidValue
from mark.core.protocol import TensorMeta

__all__ = ["ServedModel", "load_model", "default_name", "MLP_SEED"]

MLP_SEED = 20190710  # MArk's ATC'19 talk date; any fixed seed makes outputs reproducible
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

Predict = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(frozen=True, slots=True)
class ServedModel:
    """A loaded model: its v2 metadata and a batch predict function (inputs by name in, outputs
    by name out, all with the batch on dimension 0).

    `size_bytes` is the memory the worker's budget charges it, a lower bound: the artifact
    file's bytes (the weights a loader reads into memory), or for builtin:mlp its arrays' bytes;
    a runtime's own arenas and Python's object overhead are not counted."""

    name: str
    platform: str
    inputs: tuple[TensorMeta, ...]
    outputs: tuple[TensorMeta, ...]
    predict: Predict
    size_bytes: int


def default_name(artifact: str) -> str:
    """The served name when the spec gives none: `mlp` for builtin:mlp, else the file stem."""
    kind, _, ref = artifact.partition(":")
    return ref if kind == "builtin" else Path(ref).stem.lower()


def _builtin_mlp(name: str) -> ServedModel:
    rng = np.random.default_rng(MLP_SEED)
    w1 = rng.normal(0.0, 0.25, (16, 32)).astype(np.float32)
    b1 = rng.normal(0.0, 0.1, 32).astype(np.float32)
    w2 = rng.normal(0.0, 0.25, (32, 4)).astype(np.float32)
    b2 = rng.normal(0.0, 0.1, 4).astype(np.float32)

    def predict(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        hidden = np.maximum(inputs["input"].astype(np.float32, copy=False) @ w1 + b1, 0.0)
        return {"output": (hidden @ w2 + b2).astype(np.float32)}

    return ServedModel(
        name,
        "mark_builtin_mlp",
        (TensorMeta("input", "FP32", (-1, 16)),),
        (TensorMeta("output", "FP32", (-1, 4)),),
        predict,
        sum(a.nbytes for a in (w1, b1, w2, b2)),
    )


def _onnx_meta(node: Any) -> TensorMeta:
    datatype = _ONNX_TYPES.get(node.type)
    if datatype is None:
        raise InvalidValue("model", f"ONNX {node.name!r} has unsupported type {node.type}")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in node.shape)
    return TensorMeta(node.name, datatype, shape)


def _onnx(name: str, path: Path) -> ServedModel:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inputs = tuple(_onnx_meta(n) for n in session.get_inputs())
    outputs = tuple(_onnx_meta(n) for n in session.get_outputs())
    names = [m.name for m in outputs]

    def predict(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, dict(feeds)), strict=True))

    return ServedModel(name, "onnxruntime_onnx", inputs, outputs, predict, path.stat().st_size)


def _label_type(values: np.ndarray) -> str:
    if values.dtype.kind in "iu":
        return "INT64"
    if values.dtype.kind in "OUS":
        return "BYTES"
    return "FP32"


def _sklearn(name: str, path: Path) -> ServedModel:
    import joblib

    estimator = joblib.load(path)
    features = getattr(estimator, "n_features_in_", None)
    if not hasattr(estimator, "predict") or features is None:
        raise InvalidValue("model", f"{path} is not a fitted scikit-learn estimator")
    classes = getattr(estimator, "classes_", None)
    label = _label_type(np.asarray(classes)) if classes is not None else "FP32"
    outputs = [TensorMeta("output", label, (-1,))]
    with_proba = classes is not None and hasattr(estimator, "predict_proba")
    if with_proba:
        outputs.append(TensorMeta("probabilities", "FP32", (-1, len(np.asarray(classes)))))

    def predict(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["input"]
        labels = np.asarray(estimator.predict(x))
        if label == "BYTES":
            labels = np.asarray([str(v).encode() for v in labels], dtype=object)
        elif label == "INT64":
            labels = labels.astype(np.int64)
        else:
            labels = labels.astype(np.float32)
        out = {"output": labels}
        if with_proba:
            out["probabilities"] = np.asarray(estimator.predict_proba(x), dtype=np.float32)
        return out

    return ServedModel(
        name,
        "scikit_learn",
        (TensorMeta("input", "FP32", (-1, int(features))),),
        tuple(outputs),
        predict,
        path.stat().st_size,
    )


def _torchscript(name: str, path: Path) -> ServedModel:
    try:
        import torch
    except ImportError as exc:
        raise InvalidValue(
            "model", "torchscript artifacts need torch: pip install 'mark[torch]'"
        ) from exc
    module = torch.jit.load(str(path), map_location="cpu").eval()

    def predict(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            out = module(torch.from_numpy(np.ascontiguousarray(inputs["input"])))
        return {"output": out.detach().cpu().numpy().astype(np.float32)}

    return ServedModel(
        name,
        "pytorch_torchscript",
        (TensorMeta("input", "FP32", (-1, -1)),),
        (TensorMeta("output", "FP32", (-1, -1)),),
        predict,
        path.stat().st_size,
    )


_FILE_LOADERS: Mapping[str, Callable[[str, Path], ServedModel]] = {
    "onnx": _onnx,
    "sklearn": _sklearn,
    "torchscript": _torchscript,
}


def load_model(name: str, artifact: str) -> ServedModel:
    """Load `artifact` (see the module docstring) and serve it as `name`. Raises InvalidValue
    naming what is wrong: unknown kind, missing file, a missing optional dependency."""
    kind, _, ref = artifact.partition(":")
    if kind == "builtin":
        if ref != "mlp":
            raise InvalidValue("model", f"unknown builtin model {ref!r} (known: mlp)")
        return _builtin_mlp(name)
    loader = _FILE_LOADERS.get(kind)
    if loader is None:
        raise InvalidValue(
            "model",
            f"unknown artifact kind {kind!r} in {artifact!r} "
            "(use builtin:mlp, onnx:PATH, sklearn:PATH or torchscript:PATH)",
        )
    path = Path(ref)
    if not path.is_file():
        raise InvalidValue("model", f"artifact file {path} does not exist")
    return loader(name, path)
