"""Wire formats of inference: KServe v2 / Open Inference Protocol (JSON and the binary tensor
extension) and TensorFlow Serving REST `:predict`, translated to one internal request.

Shared by the front end (parsing clients, talking to instances) and the reference worker
(`mark.apps.worker`), so that both ends agree byte for byte. One module per part:
- `messages`: the internal request and response (`InferRequest`, `Tensor`, ...) and `validate`;
- `arrays`: tensor data as numpy arrays, checked against the declared datatype and shape;
- `json_codec`: JSON through orjson, the stdlib for NaN and Infinity;
- `binary`: Triton's binary tensor data extension (`Inference-Header-Content-Length`);
- `v2`: KServe v2 requests and responses; `tf_serving`: TF Serving's `instances` and `inputs`;
- `batching`: concatenating requests along dimension 0 and splitting the answer back;
- `repository`: Mark's additions to the model repository extension (`LOAD_PIN_HEADER`,
  `UNLOAD_IDLE_HEADER`, `index_etag`, `REFUSED_HEADER` and its `NO_ROOM`).

Hot path (bench/bench_frontend.py): JSON goes through orjson, numeric tensors are serialized
straight from their arrays, and a v2 JSON request keeps its body (`InferRequest.raw`) so that a
batch of one is forwarded without being encoded again.
"""

from mark.core.protocol.batching import batch_key, batch_size, concat, split
from mark.core.protocol.binary import HEADER_LENGTH, parse_header_length
from mark.core.protocol.errors import BackendError, ProtocolError
from mark.core.protocol.messages import (
    InferRequest,
    InferResponse,
    RequestedOutput,
    Tensor,
    TensorMeta,
    TfFormat,
    validate,
)
from mark.core.protocol.repository import (
    LOAD_PIN_HEADER,
    NO_ROOM,
    REFUSED_HEADER,
    UNLOAD_IDLE_HEADER,
    index_etag,
)
from mark.core.protocol.tf_serving import (
    encode_tf_request,
    encode_tf_response,
    parse_tf_request,
    parse_tf_response,
)
from mark.core.protocol.v2 import (
    encode_v2_request,
    encode_v2_response,
    parse_v2_request,
    parse_v2_response,
)

__all__ = [
    "ProtocolError",
    "BackendError",
    "HEADER_LENGTH",
    "LOAD_PIN_HEADER",
    "NO_ROOM",
    "REFUSED_HEADER",
    "UNLOAD_IDLE_HEADER",
    "index_etag",
    "parse_header_length",
    "Tensor",
    "TensorMeta",
    "RequestedOutput",
    "InferRequest",
    "InferResponse",
    "TfFormat",
    "parse_v2_request",
    "encode_v2_request",
    "parse_v2_response",
    "encode_v2_response",
    "parse_tf_request",
    "encode_tf_request",
    "parse_tf_response",
    "encode_tf_response",
    "batch_key",
    "batch_size",
    "concat",
    "split",
    "validate",
]
