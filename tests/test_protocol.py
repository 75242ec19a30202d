"""KServe v2 and TF Serving wire formats, and batch concatenation / splitting."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mark.core.protocol import (
    BackendError,
    InferRequest,
    InferResponse,
    ProtocolError,
    RequestedOutput,
    Tensor,
    TensorMeta,
    batch_key,
    concat,
    encode_tf_request,
    encode_tf_response,
    encode_v2_request,
    encode_v2_response,
    parse_tf_request,
    parse_tf_response,
    parse_v2_request,
    parse_v2_response,
    split,
    validate,
)

MLP_INPUTS = (TensorMeta("input", "FP32", (-1, 16)),)


def _v2(inputs: list[dict[str, object]], **extra: object) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


def test_json_request_round_trip_all_types() -> None:
    body = _v2(
        [
            {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4]]},
            {"name": "n", "shape": [2], "datatype": "INT64", "data": [7, -8]},
            {"name": "s", "shape": [2, 1], "datatype": "BYTES", "data": ["héllo", "b"]},
        ],
        id="r1",
        outputs=[{"name": "y"}],
    )
    req = parse_v2_request(body)
    assert req.id == "r1" and req.outputs == (RequestedOutput("y"),)
    x, n, s = req.inputs
    assert x.array.dtype == np.float32 and x.shape == (2, 2)
    assert n.array.tolist() == [7, -8] and n.array.dtype == np.int64
    assert s.array.reshape(-1).tolist() == ["héllo".encode(), b"b"]
    for binary in (False, True):
        again = parse_v2_request(*encode_v2_request(req, binary=binary))
        for a, b in zip(req.inputs, again.inputs, strict=True):
            assert a.datatype == b.datatype and a.shape == b.shape
            assert a.array.tolist() == b.array.tolist()


def test_binary_response_as_tritonclient_reads_it() -> None:
    out = Tensor.of("output", np.arange(8, dtype=np.float32).reshape(2, 4))
    labels = Tensor.of("label", np.array([b"cat", b"dog"], dtype=object))
    resp = InferResponse((out, labels), "demo", "1", "abc")
    body, header_length = encode_v2_response(resp, {"output", "label"})
    assert header_length is not None
    head = json.loads(body[:header_length])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == 32
    back = parse_v2_response(body, header_length)
    assert back.outputs[0].array.tolist() == out.array.tolist()
    assert back.outputs[1].array.tolist() == [b"cat", b"dog"]
    assert back.id == "abc"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b"{}", "'inputs' is required"),
        (_v2([{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": [1.0]}]), "fill"),
        (_v2([{"name": "input", "shape": [1], "datatype": "FP99", "data": [1]}]), "unsupported"),
        (_v2([{"name": "input", "shape": [2], "datatype": "INT64", "data": [1.5, 2]}]), "integer"),
        (_v2([{"name": "input", "shape": [1], "datatype": "FP32", "data": ["a"]}]), "numbers"),
        (_v2([{"name": "input", "shape": [-1], "datatype": "FP32", "data": []}]), "shape"),
        (
            _v2([{"name": "input", "shape": [2], "datatype": "FP32", "data": [[1], [2, 3]]}]),
            "rectangular",
        ),
    ],
)
def test_malformed_requests_are_protocol_errors(body: bytes, fragment: str) -> None:
    with pytest.raises(ProtocolError, match=fragment):
        parse_v2_request(body)


def test_validate_against_metadata() -> None:
    good = parse_v2_request(
        _v2([{"name": "input", "shape": [3, 16], "datatype": "FP32", "data": [0.0] * 48}])
    )
    validate(good, MLP_INPUTS)
    cases = [
        ([{"name": "input", "shape": [1, 15], "datatype": "FP32", "data": [0.0] * 15}], "shape"),
        ([{"name": "input", "shape": [1, 16], "datatype": "INT64", "data": [0] * 16}], "FP32"),
        ([{"name": "other", "shape": [1], "datatype": "FP32", "data": [0.0]}], "unknown input"),
    ]
    for inputs, fragment in cases:
        with pytest.raises(ProtocolError, match=fragment):
            validate(parse_v2_request(_v2(inputs)), MLP_INPUTS)


def test_tf_serving_row_and_columnar_formats() -> None:
    rows = [[float(i)] * 16 for i in range(3)]
    req, fmt = parse_tf_request(json.dumps({"instances": rows}).encode(), MLP_INPUTS)
    assert fmt == "instances" and req.inputs[0].name == "input" and req.inputs[0].shape == (3, 16)
    req2, fmt2 = parse_tf_request(json.dumps({"inputs": {"input": rows}}).encode(), MLP_INPUTS)
    assert fmt2 == "inputs" and req2.inputs[0].array.tolist() == req.inputs[0].array.tolist()
    named, _ = parse_tf_request(
        json.dumps({"instances": [{"a": 1, "b": "x"}, {"a": 2, "b": {"b64": "eQ=="}}]}).encode()
    )
    assert named.inputs[0].datatype == "INT64" and named.inputs[1].array.tolist() == [b"x", b"y"]
    out = InferResponse((Tensor.of("output", np.ones((3, 4), dtype=np.float32)),))
    assert json.loads(encode_tf_response(out, "instances")) == {"predictions": [[1.0] * 4] * 3}
    assert json.loads(encode_tf_response(out, "inputs")) == {"outputs": [[1.0] * 4] * 3}
    back = parse_tf_response(encode_tf_response(out, "inputs"), ["output"])
    assert back.outputs[0].name == "output" and back.outputs[0].shape == (3, 4)
    assert json.loads(encode_tf_request(req)) == {"inputs": {"input": rows}}
    for bad in (b"{}", b'{"instances": []}', b'{"instances": [1], "inputs": [1]}'):
        with pytest.raises(ProtocolError):
            parse_tf_request(bad, MLP_INPUTS)


def test_tf_serving_unnamed_rows_feed_the_one_input_whatever_its_name() -> None:
    rows = json.dumps({"instances": [[1.0, 2.0], [3.0, 4.0]]}).encode()
    (x,) = parse_tf_request(rows, (TensorMeta("x", "FP64", (-1, 2)),))[0].inputs
    assert (x.name, x.datatype, x.array.dtype, x.shape) == ("x", "FP64", np.float64, (2, 2))
    column = json.dumps({"inputs": [[1.0, 2.0]]}).encode()
    assert parse_tf_request(column, (TensorMeta("x", "FP32", (-1, 2)),))[0].inputs[0].name == "x"
    two = (TensorMeta("a", "FP32", (-1, 2)), TensorMeta("b", "FP32", (-1, 2)))
    for body, where in ((rows, "each row of 'instances'"), (column, "'inputs'")):
        with pytest.raises(ProtocolError, match=f"takes 2 inputs \\('a', 'b'\\): {where}"):
            parse_tf_request(body, two)
    named = json.dumps({"instances": [{"a": [1, 2], "b": [3, 4]}]}).encode()
    assert [t.name for t in parse_tf_request(named, two)[0].inputs] == ["a", "b"]


def test_concat_and_split_along_the_batch_dimension() -> None:
    reqs = [
        InferRequest((Tensor.of("input", np.full((n, 16), n, dtype=np.float32)),))
        for n in (1, 3, 2)
    ]
    assert len({batch_key(r) for r in reqs}) == 1
    merged = concat(reqs)
    assert merged.inputs[0].shape == (6, 16)
    response = InferResponse((Tensor.of("output", merged.inputs[0].array[:, :4]),), "m")
    parts = split(response, [1, 3, 2])
    assert [p.outputs[0].array[:, 0].tolist() for p in parts] == [[1], [3, 3, 3], [2, 2]]
    with pytest.raises(BackendError):
        split(response, [1, 1])
    scalar = InferRequest((Tensor.of("x", np.float32(1.0)),))
    assert batch_key(scalar) is None
    other = InferRequest((Tensor.of("input", np.zeros((1, 8), dtype=np.float32)),))
    assert batch_key(other) != batch_key(reqs[0])
