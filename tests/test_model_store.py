"""Model stores (mark/adapters/model_store/): a local directory, and S3 through boto3 against
moto's server on loopback; the same contract for both."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from mark.adapters.model_store import ModelStore, open_store, split_name
from mark.adapters.model_store.local import LocalStore
from mark.adapters.model_store.s3 import S3Store
from mark.core.errors import InvalidValue, NotFound

Put = Callable[[str, bytes], None]
Remove = Callable[[str], None]


@pytest.fixture(params=["local", "s3"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[ModelStore, Put, Remove]]:
    if request.param == "local":
        root = tmp_path / "store"
        root.mkdir()

        def put(key: str, data: bytes) -> None:
            (root / f".{key}.tmp").write_bytes(data)
            (root / f".{key}.tmp").replace(root / key)

        yield open_store(str(root)), put, lambda key: (root / key).unlink()
        return
    moto_url = request.getfixturevalue("moto_url")
    client: Any = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")
    bucket = f"store-{time.monotonic_ns()}"
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="elsewhere/other.onnx", Body=b"x")  # outside the prefix
    client.put_object(Bucket=bucket, Key="models/nested/deep.onnx", Body=b"x")  # not a model here

    def put_s3(key: str, data: bytes) -> None:
        client.put_object(Bucket=bucket, Key=f"models/{key}", Body=data)

    def remove_s3(key: str) -> None:
        client.delete_object(Bucket=bucket, Key=f"models/{key}")

    yield open_store(f"s3://{bucket}/models", endpoint_url=moto_url), put_s3, remove_s3


def test_list_stat_fetch_and_versions(
    store: tuple[ModelStore, Put, Remove], tmp_path: Path
) -> None:
    st, put, remove = store
    put("a.onnx", b"first")
    put("b.joblib", b"bb")
    put("README.txt", b"not a model")
    assert [(m.name, m.kind, m.size_bytes) for m in st.list()] == [
        ("a", "onnx", 5),
        ("b", "sklearn", 2),
    ]
    assert [m.name for m in st.list("b")] == ["b"]
    assert st.list("a.") == [] and st.list("c") == []  # "a." is no model name's start
    a = st.stat("a")
    # a model's backend.artifact: the loader, then the file or the object's s3:// URL
    where = f"{st.url}/a.onnx" if isinstance(st, LocalStore) else f"{st.url}a.onnx"
    assert st.artifact(a) == f"onnx:{where}"
    dest = tmp_path / "copy.onnx"
    got = st.fetch(a, dest)
    assert dest.read_bytes() == b"first" and got.version == a.version
    assert not list(tmp_path.glob(".*part"))

    time.sleep(0.01)  # a new mtime for the local store (ETags differ by content anyway)
    put("a.onnx", b"second!")
    changed = st.stat("a")
    assert changed.version != a.version and changed.size_bytes == 7
    got = st.fetch(a, dest)  # asked with the old entry: the bytes and version are the new ones
    assert dest.read_bytes() == b"second!" and got.version == changed.version

    for name in ("nope", "../store/a", "a.onnx"):
        with pytest.raises(NotFound):
            st.stat(name)
    remove("a.onnx")
    with pytest.raises(NotFound):
        st.stat("a")
    with pytest.raises(NotFound):
        st.fetch(changed, dest)


def test_open_store_by_url(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    s3 = open_store("s3://bucket/some/prefix/", endpoint_url="http://127.0.0.1:1")
    assert isinstance(s3, S3Store) and s3.url == "s3://bucket/some/prefix/"
    for url, fragment in [
        (str(tmp_path / "absent"), "does not exist"),
        ("s3:///prefix", "no bucket"),
        ("gs://bucket/x", "directory or s3://"),
    ]:
        with pytest.raises(InvalidValue, match=fragment):
            open_store(url)


def test_split_name() -> None:
    assert split_name("m.onnx") == ("m", "onnx")
    assert split_name("m.PT") == ("m", "torchscript")
    assert split_name("Upper.onnx") is None  # not a model name Mark registers
    assert split_name("m.pkl") == ("m", "sklearn")
    assert split_name(".hidden.onnx") is None
    assert split_name("m.txt") is None
