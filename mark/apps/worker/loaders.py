"""Model artifacts the reference worker can serve, each behind one small interface.

An artifact spec names the loader and its file: `builtin:mlp` (a numpy MLP with fixed seeded
weights, for demos and tests: input `input` FP32 [-1, 16], output `output` FP32 [-1, 4]),
`onnx:/path/model.onnx` (onnxruntime, CPU), `sklearn:/path/model.joblib` (joblib pickle of a
fitted estimator), `torchscript:/path/model.pt` (only when torch is installed). Every model takes
and returns whole batches (dimension 0), so the worker can execute many requests as one call.
What each artifact declares (its signature: an sklearn input of the estimator's own datatype, an
ONNX graph's own inputs and outputs) is read by `mark.adapters.artifacts`, which the front end
reads too when no instance runs the model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mark.adapters.artifacts import (
    BUILTIN_MLP,
    TORCHSCRIPT,
    Signature,
    artifact_file,
    onnx_session,
    onnx_signature,
    sklearn_estimator,
    sklearn_signature,
)
from mark.core.errors import InvalidValue
from mark.core.protocol import TensorMeta

__all__ = ["ServedModel", "load_model", "default_name", "MLP_SEED"]

MLP_SEED = 20190710  # MArk's ATC'19 talk date; any fixed seed makes outputs reproducible

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


def _served(name: str, signature: Signature, predict: Predict, size_bytes: int) -> ServedModel:
    return ServedModel(
        name, signature.platform, signature.inputs, signature.outputs, predict, size_bytes
    )


def _builtin_mlp(name: str) -> ServedModel:
    rng = np.random.default_rng(MLP_SEED)
    w1 = rng.normal(0.0, 0.25, (16, 32)).astype(np.float32)
    b1 = rng.normal(0.0, 0.1, 32).astype(np.float32)
    w2 = rng.normal(0.0, 0.25, (32, 4)).astype(np.float32)
    b2 = rng.normal(0.0, 0.1, 4).astype(np.float32)

    def predict(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        hidden = np.maximum(inputs["input"].astype(np.float32, copy=False) @ w1 + b1, 0.0)
        return {"output": (hidden @ w2 + b2).astype(np.float32)}

    return _served(name, BUILTIN_MLP, predict, sum(a.nbytes for a in (w1, b1, w2, b2)))


def _onnx(name: str, path: Path) -> ServedModel:
    session = onnx_session(path)
    signature = onnx_signature(session)
    names = [m.name for m in signature.outputs]

    def predict(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, dict(feeds)), strict=True))

    return _served(name, signature, predict, path.stat().st_size)


def _sklearn(name: str, path: Path) -> ServedModel:
    estimator = sklearn_estimator(path)
    signature = sklearn_signature(estimator)
    label = signature.outputs[0].datatype
    with_proba = len(signature.outputs) > 1

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

    return _served(name, signature, predict, path.stat().st_size)


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

    return _served(name, TORCHSCRIPT, predict, path.stat().st_size)


_FILE_LOADERS: Mapping[str, Callable[[str, Path], ServedModel]] = {
    "onnx": _onnx,
    "sklearn": _sklearn,
    "torchscript": _torchscript,
}


def load_model(name: str, artifact: str) -> ServedModel:
    """Load `artifact` (see the module docstring) and serve it as `name`. Raises InvalidValue
    naming what is wrong: unknown kind, missing file, a missing optional dependency."""
    kind, path = artifact_file(artifact)
    if path is None:
        return _builtin_mlp(name)
    return _FILE_LOADERS[kind](name, path)
