"""Bad input (issue 18, item 3): hypothesis-generated inference bodies for KServe v2 (JSON and the
binary tensor extension) and TF Serving REST against a real `mark serve --demo` and a real
`mark worker`. A body that is wrong (datatype, shape, empty or huge tensor, NaN or infinity where
integers belong, invalid UTF-8, nesting past any limit, a binary header or size that lies) gets a
4xx; a body the generator cannot call wrong (a field replaced by arbitrary JSON, NaN in an FP32
tensor) may get 200; none gets a 5xx, both processes stay up, and a good request is answered after
every batch of bad ones. Oversized bodies get 413 from the headers alone, and a config of the
wrong type stops `mark serve` at start-up naming the key.

Bounded: 50 examples per protocol and server, each a batch of up to four bad bodies."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from mark.core.config import Config, load_config
from mark.core.errors import InvalidValue
from mark.core.protocol import HEADER_LENGTH, ProtocolError, parse_v2_request, validate
from mark.core.protocol.arrays import MAX_ELEMENTS, NUMPY_DTYPES
from tests.conftest import Served, start_serve, stop_serve_process
from tests.dataplane import LISTENING

MAX_BODY_MB = 1  # the front end's limit in these tests: an oversized body stays cheap to send
ROW = [0.125 * i for i in range(16)]  # the demo model takes FP32 [-1, 16]
FUZZ = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass(frozen=True)
class Body:
    """One request: its path suffix (`infer` or `predict`), headers, bytes, and whether it is
    wrong for certain (must get a 4xx) or only possibly (must not get a 5xx)."""

    verb: str
    data: bytes
    headers: tuple[tuple[str, str], ...] = ()
    wrong: bool = True


@dataclass
class Target:
    host: str
    port: int
    process: subprocess.Popen[bytes]

    def post(self, body: Body) -> int:
        path = "/v2/models/demo/infer" if body.verb == "infer" else "/v1/models/demo:predict"
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request("POST", path, body=body.data, headers=dict(body.headers))
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


def _v2(tensor: dict[str, Any], **extra: Any) -> bytes:
    return _dumps({"inputs": [tensor], **extra})


GOOD_V2 = Body("infer", _v2({"name": "input", "datatype": "FP32", "shape": [1, 16], "data": ROW}))
GOOD_TF = Body("predict", _dumps({"instances": [ROW]}))

# -- strategies -------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
specials = st.sampled_from([float("nan"), float("inf"), float("-inf")])
other_dtypes = st.sampled_from(sorted(set(NUMPY_DTYPES) - {"FP32"})) | st.text(max_size=8)
rows = st.integers(1, 4)


@st.composite
def wrong_dtype(draw: st.DrawFn) -> Body:
    n = draw(rows)
    dtype = draw(other_dtypes)
    return Body("infer", _v2({"name": "input", "datatype": dtype, "shape": [n, 16],
                              "data": [1] * (16 * n)}))  # fmt: skip


@st.composite
def wrong_shape(draw: st.DrawFn) -> Body:
    shape = draw(st.lists(st.integers(-3, 40), max_size=5).filter(
        lambda s: not (len(s) == 2 and s[0] >= 1 and s[1] == 16)))  # fmt: skip
    size = draw(st.integers(0, 64))
    return Body("infer", _v2({"name": "input", "datatype": "FP32", "shape": shape,
                              "data": [0.5] * size}))  # fmt: skip


@st.composite
def huge_or_empty(draw: st.DrawFn) -> Body:
    kind = draw(st.sampled_from(["declared", "empty", "long"]))
    if kind == "declared":  # more elements than any tensor may hold, few given
        side = draw(st.integers(1 << 15, 1 << 40))
        shape = [side, max(MAX_ELEMENTS // side + 1, 16)]
        data: list[float] = ROW
    elif kind == "empty":
        shape, data = draw(st.sampled_from([[0, 16], [0], [1, 0], []])), []
    else:  # a long body (~400 KB) whose rows are one value short
        n = draw(st.integers(2000, 5000))
        shape, data = [n, 15], [0.25] * (15 * n)
    return Body("infer", _v2({"name": "input", "datatype": "FP32", "shape": shape, "data": data}))


@st.composite
def special_floats(draw: st.DrawFn) -> Body:
    """NaN and infinities: wrong in integer and BOOL tensors, values like any in FP32 ones."""
    value = draw(specials)
    dtype = draw(st.sampled_from(["INT32", "INT64", "UINT8", "BOOL", "FP32"]))
    data = [value] + ROW[1:]
    if draw(st.booleans()):
        return Body("predict", _dumps({"instances": [data]}), wrong=False)
    tensor = {"name": "input", "datatype": dtype, "shape": [1, 16], "data": data}
    return Body("infer", _v2(tensor), wrong=dtype != "FP32")


@st.composite
def out_of_range(draw: st.DrawFn) -> Body:
    """Numbers the datatype cannot hold (a 5,000-digit integer fits none, nor Python's
    int parser); 1e400 is not here: JSON readers take it as infinity, as they do `Infinity`."""
    dtype = draw(st.sampled_from(["UINT8", "INT8", "INT16", "INT64", "FP16", "FP32"]))
    tokens = {
        "UINT8": ["300", "-1"],
        "INT8": ["128", "-129"],
        "INT16": ["40000"],
        "INT64": [str(1 << 70)],
        "FP16": ["70000", str(1 << 40)],
        "FP32": ["1e39"],
    }
    token = draw(st.sampled_from([*tokens[dtype], "1" + "0" * 5000]))
    tensor = {"name": "input", "datatype": dtype, "shape": [1], "data": ["N"]}
    return Body("infer", _v2(tensor).replace(b'"N"', token.encode()))


@st.composite
def bad_utf8(draw: st.DrawFn) -> Body:
    good = draw(st.sampled_from([GOOD_V2, GOOD_TF]))
    junk = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80\x80", b"\xf8"]))
    if draw(st.booleans()):  # valid UTF-8 escaping a lone surrogate, which none can encode
        return Body("infer", GOOD_V2.data.replace(b'"input"', b'"\\ud800"', 1))
    return Body(good.verb, good.data[:2] + junk + good.data[2:])  # inside the first key


@st.composite
def deep_nesting(draw: st.DrawFn) -> Body:
    depth = draw(st.integers(40, 200_000))
    nested = b"[" * depth + b"1" + b"]" * depth
    if draw(st.booleans()):
        data = b'{"instances": ' + nested + b"}"
        return Body("predict", data)
    return Body("infer", b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], '
                         b'"data": ' + nested + b"}]}")  # fmt: skip


@st.composite
def mutated_field(draw: st.DrawFn) -> Body:
    """A good body with one field replaced by arbitrary JSON: often wrong, sometimes not."""
    doc: dict[str, Any] = json.loads(GOOD_V2.data)
    key = draw(st.sampled_from(["inputs", "outputs", "parameters", "id", "name", "datatype",
                                "shape", "data", "tensor parameters"]))  # fmt: skip
    value = draw(json_values)
    if key in ("inputs", "outputs", "parameters", "id"):
        doc[key] = value
    else:
        doc["inputs"][0]["parameters" if key == "tensor parameters" else key] = value
    return Body("infer", _dumps(doc), wrong=False)


@st.composite
def garbage(draw: st.DrawFn) -> Body:
    data = draw(st.binary(max_size=200) | json_values.map(_dumps))
    return Body(draw(st.sampled_from(["infer", "predict"])), data, wrong=False)


@st.composite
def lying_binary(draw: st.DrawFn) -> Body:
    """The binary extension with a header length or a `binary_data_size` that lies."""
    n = draw(rows)
    payload = b"\x00\x00\x80\x3f" * (16 * n)  # n rows of float32 1.0, little-endian
    size = draw(st.sampled_from(["right", "over", "under", "odd", "negative", "text"]))
    sizes = {"right": len(payload), "over": len(payload) + 4, "under": len(payload) - 64,
             "odd": len(payload) - 1, "negative": -4, "text": "64"}  # fmt: skip
    tensor = {"name": "input", "datatype": "FP32", "shape": [n, 16],
              "parameters": {"binary_data_size": sizes[size]}}  # fmt: skip
    head = _v2(tensor)
    length = draw(st.sampled_from(["right", "over", "under", "zero", "negative", "junk"]))
    if size == "right" and length == "right":
        length = "over"
    lengths = {
        "right": str(len(head)),
        "over": str(len(head) + len(payload) + 1),
        "under": str(len(head) - 3),
        "zero": "0",
        "negative": "-1",
        "junk": "12abc",
    }
    if length == "right" and size == "under":
        payload += b"\x00" * 64  # the sizes lie about a body that holds more
    return Body("infer", head + payload, ((HEADER_LENGTH, lengths[length]),))


@st.composite
def tf_wrong(draw: st.DrawFn) -> Body:
    doc = draw(st.sampled_from([
        {"instances": []},
        {"instances": [ROW[:15]]},
        {"instances": [ROW, ROW[:15]]},
        {"instances": [["a"] * 16]},
        {"instances": [{"b64": "!!"}]},
        {"instances": [{"input": ROW}, {"other": ROW}]},
        {"instances": [{"nope": ROW}]},
        {"inputs": {"nope": [ROW]}},
        {"inputs": 3},
        {"inputs": [ROW], "instances": [ROW]},
        {"signature_name": "x"},
        {"instances": {"input": [ROW]}},
        {"instances": [[[ROW]]]},
        {"instances": [[True] * 16]},
        {"instances": [[1e39] * 16]},
    ]))  # fmt: skip
    return Body("predict", _dumps(doc))


V2_BAD = (wrong_dtype() | wrong_shape() | huge_or_empty() | special_floats() | out_of_range()
          | bad_utf8() | deep_nesting() | mutated_field() | garbage() | lying_binary())  # fmt: skip
TF_BAD = tf_wrong() | special_floats() | bad_utf8() | deep_nesting() | garbage()


# -- what the fuzzer found, pinned: each was a 500 (or a silently wrong value) before ---------

FOUND = [
    b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}",  # RecursionError in the stdlib fallback
    b'{"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["\\ud800"]}]}',
    b'{"inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": [1'
    + b"0" * 5000
    + b"]}]}",
    _v2({"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}, outputs=5),  # TypeError
    _v2({"name": "x", "datatype": "UINT8", "shape": [1], "data": [300]}),  # answered as 44
    _v2({"name": "x", "datatype": "FP16", "shape": [1], "data": [1e10]}),  # RuntimeWarning, inf
    _v2({"name": "x", "datatype": "FP32", "shape": [1], "data": [True]}),  # answered as 1.0
    _v2({"name": "x", "datatype": "FP32", "shape": [0, 16], "data": []}),  # a batch of no rows
]


@pytest.mark.parametrize("body", FOUND)
def test_what_the_fuzzer_found_is_a_protocol_error(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        validate(parse_v2_request(body), ())


# -- servers ----------------------------------------------------------------------------------


def _wait_good(target: Target, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while target.post(GOOD_V2) != 200:
        assert time.monotonic() < deadline, "the demo model never answered a good request"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    workdir = tmp_path_factory.mktemp("fuzz-serve")
    served: Served = start_serve(
        workdir,
        f"sqlite+aiosqlite:///{workdir / 'mark.db'}",
        extra_args=("--demo",),
        config_text=f"[server]\nmax_body_mb = {MAX_BODY_MB}\n",
    )
    host, port = served.base_url.removeprefix("http://").split(":")
    target = Target(host, int(port), served.process)
    try:
        _wait_good(target)
        yield target
    finally:
        stop_serve_process(served.process)


@pytest.fixture(scope="module")
def worker() -> Iterator[Target]:
    args = [sys.executable, "-m", "mark.apps.cli", "worker", "--port", "0",
            "--model", "demo=builtin:mlp", "--max-body-mb", str(MAX_BODY_MB)]  # fmt: skip
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        assert LISTENING in line, line
        host, port = line.split(LISTENING, 1)[1].strip().removeprefix("http://").split(":")
        target = Target(host, int(port), process)
        _wait_good(target)
        yield target
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        assert process.stdout is not None
        process.stdout.close()


def _check_batch(target: Target, batch: list[Body]) -> None:
    for body in batch:
        status = target.post(body)
        assert status < 500, (status, body)
        if body.wrong:
            assert 400 <= status < 500, (status, body)
    assert target.process.poll() is None, "the server died"
    assert target.post(GOOD_V2) == 200 and target.post(GOOD_TF) == 200


@FUZZ
@given(batch=st.lists(V2_BAD, min_size=1, max_size=4))
def test_front_end_answers_bad_v2_bodies_with_4xx(serve: Target, batch: list[Body]) -> None:
    _check_batch(serve, batch)


@FUZZ
@given(batch=st.lists(TF_BAD, min_size=1, max_size=4))
def test_front_end_answers_bad_tf_bodies_with_4xx(serve: Target, batch: list[Body]) -> None:
    _check_batch(serve, batch)


@FUZZ
@given(batch=st.lists(V2_BAD, min_size=1, max_size=4))
def test_worker_answers_bad_v2_bodies_with_4xx(worker: Target, batch: list[Body]) -> None:
    _check_batch(worker, batch)


@FUZZ
@given(batch=st.lists(TF_BAD, min_size=1, max_size=4))
def test_worker_answers_bad_tf_bodies_with_4xx(worker: Target, batch: list[Body]) -> None:
    _check_batch(worker, batch)


def _oversized_status(target: Target, headers: bytes, sent: int = 1024) -> int:
    """Send the headers and `sent` bytes of the (much longer) body they announce, and read the
    answer; the socket's timeout bounds the wait, so a server that waits for the whole body
    before answering fails here."""
    with socket.create_connection((target.host, target.port), timeout=10) as sock:
        sock.sendall(headers + b"\r\n")
        with contextlib.suppress(OSError):  # the server may close before all is sent
            sock.sendall(b"[" * sent)
        reply = sock.makefile("rb")
        status = int(reply.readline().split()[1])
        reply.close()
        return status


@pytest.mark.parametrize("verb", ["infer", "predict"])
def test_front_end_refuses_an_oversized_body_from_its_headers(serve: Target, verb: str) -> None:
    path = b"/v2/models/demo/infer" if verb == "infer" else b"/v1/models/demo:predict"
    announced = 1000 * MAX_BODY_MB * 1024 * 1024  # a thousand times the limit, never sent
    head = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % (path, announced)
    assert _oversized_status(serve, head) == 413
    assert serve.post(GOOD_V2) == 200


def test_worker_refuses_an_oversized_body_at_its_limit(worker: Target) -> None:
    """aiohttp does not refuse from Content-Length: it reads up to `client_max_size` and
    answers 413 there, so the worker is sent a little past its limit, not the whole body."""
    announced = 1000 * MAX_BODY_MB * 1024 * 1024
    head = b"POST /v2/models/demo/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % announced
    assert _oversized_status(worker, head, sent=2 * MAX_BODY_MB * 1024 * 1024) == 413
    assert worker.post(GOOD_V2) == 200


def test_front_end_refuses_a_chunked_body_past_the_limit(serve: Target) -> None:
    """No Content-Length to refuse from: the server counts the chunks and stops at the limit."""
    chunk = b"[" * (256 * 1024)
    with socket.create_connection((serve.host, serve.port), timeout=10) as sock:
        sock.sendall(b"POST /v2/models/demo/infer HTTP/1.1\r\nHost: x\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")  # fmt: skip
        with contextlib.suppress(OSError):  # the server may close before all is sent
            for _ in range(8 * MAX_BODY_MB):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sock.sendall(b"0\r\n\r\n")
        reply = sock.makefile("rb")
        status = int(reply.readline().split()[1])
        reply.close()
    assert status == 413
    assert serve.post(GOOD_V2) == 200


# -- configuration ----------------------------------------------------------------------------


def _leaf_keys() -> list[tuple[str, str, Any]]:
    """Every key of every section, with its annotation."""
    keys = []
    for section, field in Config.model_fields.items():
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        for key, info in model.model_fields.items():
            keys.append((section, key, info.annotation))
    return keys


def _wrong_value(annotation: Any) -> str:
    """A TOML value no field of this type accepts: a table for scalars and lists, a number for
    tables."""
    origin = get_origin(annotation) or annotation
    if origin in (dict,) or (isinstance(origin, type) and issubclass(origin, BaseModel)):
        return "3"
    if any(get_origin(a) is dict for a in get_args(annotation)):
        return "3"
    return "{ wrong = 1 }"


@pytest.mark.parametrize("key", _leaf_keys(), ids=lambda k: f"{k[0]}.{k[1]}")
def test_a_config_key_of_the_wrong_type_is_named(tmp_path: Path, key: tuple[str, str, Any]) -> None:
    section, name, annotation = key
    text = f"[{section}]\n{name} = {_wrong_value(annotation)}\n"
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(InvalidValue) as info:
        load_config(path, environ={})
    assert info.value.field == f"{section}.{name}", text


def test_serve_with_a_config_of_the_wrong_type_exits_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[planner]\nbudget_per_hour = "a lot"\n')
    done = subprocess.run(
        [sys.executable, "-m", "mark.apps.cli", "serve", "--config", str(path), "--port", "0"],
        capture_output=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode != 0
    assert "planner.budget_per_hour" in done.stderr.decode()
