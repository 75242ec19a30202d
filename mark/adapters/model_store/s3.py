"""`S3Store`: artifacts under `s3://bucket/prefix`, versioned by their ETags, through boto3.

Credentials and region come from boto3's default chain; `endpoint_url` points the same client
at an emulator (moto's server in the tests). A GET returns the ETag of the bytes it sends, so a
version is never paired with another version's content.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

from mark.adapters.model_store import StoredModel, split_name, valid_name
from mark.core.errors import NotFound

__all__ = ["S3Store"]

_MISSING = {"404", "NoSuchKey", "NotFound"}


class S3Store:
    def __init__(self, bucket: str, prefix: str, *, endpoint_url: str | None = None) -> None:
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}"
        self.client: Any = boto3.client("s3", endpoint_url=endpoint_url)

    def _objects(self, prefix: str) -> list[StoredModel]:
        out = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        ):
            for obj in page.get("Contents", []):
                rest = obj["Key"][len(self.prefix) :]
                named = split_name(rest) if "/" not in rest else None
                if named is not None:
                    name, kind = named
                    out.append(StoredModel(name, obj["Key"], kind, obj["Size"], obj["ETag"]))
        return out

    def list(self, prefix: str = "") -> list[StoredModel]:
        entries = self._objects(f"{self.prefix}{prefix}")
        return [e for e in entries if e.name.startswith(prefix)]  # "a.o" lists a.onnx, not "a"

    def artifact(self, model: StoredModel) -> str:
        return f"{model.kind}:s3://{self.bucket}/{model.key}"

    def stat(self, name: str) -> StoredModel:
        for entry in self._objects(f"{self.prefix}{name}.") if valid_name(name) else []:
            if entry.name == name:
                return entry
        raise NotFound(f"model {name!r} is not in the store {self.url}")

    def head(self, name: str, kind: str, key: str) -> StoredModel:
        """The entry of the object at `key` in this bucket, served as `name` by loader `kind`
        (one HEAD): an artifact named by its URL rather than found under the prefix."""
        try:
            got = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                raise NotFound(f"model {name!r}: no object s3://{self.bucket}/{key}") from exc
            raise
        return StoredModel(name, key, kind, got["ContentLength"], got["ETag"])

    def fetch(self, model: StoredModel, dest: Path) -> StoredModel:
        try:
            got = self.client.get_object(Bucket=self.bucket, Key=model.key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                raise NotFound(f"model {model.name!r} is no longer in {self.url}") from exc
            raise
        tmp = dest.with_name(f".{dest.name}.part")
        with tmp.open("wb") as fh:
            for chunk in got["Body"].iter_chunks(1 << 20):
                fh.write(chunk)
        got["Body"].close()
        os.replace(tmp, dest)
        return StoredModel(model.name, model.key, model.kind, got["ContentLength"], got["ETag"])
