"""Model stores: where `mark worker` finds the artifacts it loads on demand (issue 19).

A store holds one file per model, `<model><suffix>`, the suffix naming the loader as
`mark worker --model` spells it (`.onnx` onnx, `.joblib` or `.pkl` sklearn, `.pt` torchscript).
Two stores behind one seam, chosen by URL: a local directory (a path, the default kind) and S3
(`s3://bucket/prefix`) through boto3, where tests differ from production only in `endpoint_url`
(moto's server on loopback). Every stored model carries a version token that changes when its
artifact does (mtime and size locally, the ETag on S3): the worker polls it to reload live.
The calls block (boto3 does), so the worker runs them in a thread.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from mark.core.errors import InvalidValue
from mark.core.types import MODEL_NAME_PATTERN

if TYPE_CHECKING:
    from mark.adapters.model_store.s3 import S3Store

__all__ = [
    "ModelStore",
    "StoredModel",
    "SUFFIX_KINDS",
    "SpecObjects",
    "object_artifact",
    "open_store",
    "split_name",
    "valid_name",
]

SUFFIX_KINDS = {".onnx": "onnx", ".joblib": "sklearn", ".pkl": "sklearn", ".pt": "torchscript"}


@dataclass(frozen=True, slots=True)
class StoredModel:
    """One model in a store: `key` is its file's path or object key, `kind` its loader."""

    name: str
    key: str
    kind: str
    size_bytes: int
    version: str


class ModelStore(Protocol):
    """Read-only access to stored artifacts. `stat` and `fetch` raise NotFound for a model the
    store does not hold (any more); other failures (network, permissions) raise their own error,
    which the worker reports as the model's reason."""

    url: str

    def list(self, prefix: str = "") -> list[StoredModel]:
        """Every model the store holds whose name starts with `prefix`, by name (a name stored
        with two suffixes is listed twice)."""
        ...

    def artifact(self, model: StoredModel) -> str:
        """Where `model` is, written as a model's `backend.artifact` (its loader, then its file
        or object): `onnx:/models/a.onnx`, `onnx:s3://bucket/models/a.onnx`."""
        ...

    def stat(self, name: str) -> StoredModel:
        """The model's current entry (one HEAD or stat, no download)."""
        ...

    def fetch(self, model: StoredModel, dest: Path) -> StoredModel:
        """Write the artifact to `dest` whole (a temporary file renamed, so a reader never sees
        half of it) and return the entry of the bytes written, whose version may be newer than
        `model`'s when the artifact changed in between."""
        ...


def valid_name(name: str) -> bool:
    """A model name as Mark registers them (MODEL_NAME_PATTERN): never a path, so a name from
    a URL cannot reach outside the store."""
    return re.match(MODEL_NAME_PATTERN, name) is not None


def split_name(filename: str) -> tuple[str, str] | None:
    """(model name, loader kind) of a stored file name, or None for a file that is no model."""
    path = Path(filename)
    kind = SUFFIX_KINDS.get(path.suffix.lower())
    if kind is None or not valid_name(path.stem):
        return None
    return path.stem, kind


def object_artifact(artifact: str) -> tuple[str, str, str] | None:
    """(kind, bucket, key) of an artifact spec whose file is an S3 object, as a store writes
    them (`onnx:s3://bucket/models/a.onnx`, `ModelStore.artifact`); None for any other spec (a
    local file, `builtin:mlp`). A model registered from an S3 store carries such a spec, and the
    worker started for it fetches the object (mark/apps/worker/cache.py)."""
    kind, _, ref = artifact.partition(":")
    if not ref.startswith("s3://"):
        return None
    bucket, _, key = ref.removeprefix("s3://").partition("/")
    if not bucket or not key or key.endswith("/"):
        raise InvalidValue("model", f"{artifact!r} names no object (KIND:s3://bucket/key)")
    return kind, bucket, key


class SpecObjects:
    """The S3 objects that artifact specs name (`object_artifact`), one `S3Store` per bucket,
    made on first use (boto3 is slow to import); `endpoint_url` None is boto3's own choice
    (AWS, or `AWS_ENDPOINT_URL_S3`). A model registered from an S3 store has only its object:
    the worker fetches it into its disk tier (mark/apps/worker/cache.py), the front end reads
    its signature from it (frontend/model_metadata.py) and the serverless handler loads it
    (deploy/lambda/handler.py), each through these calls. They block (boto3 does)."""

    def __init__(self, *, endpoint_url: str | None = None) -> None:
        self.endpoint_url = endpoint_url
        self._buckets: dict[str, S3Store] = {}

    def find(self, spec: str) -> tuple[S3Store, str, str] | None:
        """(the store of its bucket, loader kind, object key) of a spec naming an S3 object,
        else None (raises InvalidValue for a malformed object URL)."""
        found = object_artifact(spec)
        if found is None:
            return None
        kind, bucket, key = found
        store = self._buckets.get(bucket)
        if store is None:
            from mark.adapters.model_store.s3 import S3Store

            store = self._buckets[bucket] = S3Store(bucket, "", endpoint_url=self.endpoint_url)
        return store, kind, key

    def head(self, name: str, spec: str) -> StoredModel | None:
        """The entry of the object `spec` names (one HEAD; NotFound when it is not there),
        None for a spec that names no object."""
        found = self.find(spec)
        if found is None:
            return None
        store, kind, key = found
        return store.head(name, kind, key)

    def fetch(self, name: str, spec: str, dest: Path) -> tuple[str, StoredModel] | None:
        """The object `spec` names written whole to `dest` (`ModelStore.fetch`): a spec of
        the local copy for the loaders, and the entry of the bytes written; None for a spec
        that names no object."""
        found = self.find(spec)
        if found is None:
            return None
        store, kind, key = found
        got = store.fetch(StoredModel(name, key, kind, 0, ""), dest)
        return f"{kind}:{dest}", got


def open_store(url: str, *, endpoint_url: str | None = None) -> ModelStore:
    """The store `url` names: `s3://bucket[/prefix]` or a local directory."""
    if url.startswith("s3://"):
        from mark.adapters.model_store.s3 import S3Store

        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise InvalidValue("store", f"{url!r} names no bucket (s3://bucket/prefix)")
        return S3Store(bucket, prefix, endpoint_url=endpoint_url)
    if "://" in url:
        raise InvalidValue("store", f"{url!r}: a store is a directory or s3://bucket/prefix")
    from mark.adapters.model_store.local import LocalStore

    return LocalStore(Path(url))
