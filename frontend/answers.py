"""What the fleet answers a request with: an `Answer` (from an instance or the serverless pool),
or `Unavailable` (503) when neither could answer in time, or `Shed` (429 with Retry-After) when
late requests are shed (`batching.shed_late`)."""

from __future__ import annotations

from mark.core.protocol import InferResponse, parse_v2_response

__all__ = ["Answer", "Shed", "Unavailable"]


class Answer:
    """A successful answer and who gave it (`instance` or `serverless`).

    A v2 request that went to an instance alone and as the client sent it (`InferRequest.raw`)
    has the instance's answer as it came (`body`, `header_length`): it is exactly what the
    client asked for, so the front end passes it back without parsing and re-encoding it
    (~15% of the front end's CPU per request); `response` parses it only when asked."""

    __slots__ = ("path", "instance_id", "body", "header_length", "_response")

    def __init__(
        self,
        response: InferResponse | None,
        path: str,
        instance_id: str | None = None,
        *,
        body: bytes | None = None,
        header_length: int | None = None,
    ) -> None:
        if response is None and body is None:
            raise ValueError("an Answer needs a response or a body")
        self._response = response
        self.path = path
        self.instance_id = instance_id
        self.body = body
        self.header_length = header_length

    @property
    def response(self) -> InferResponse:
        if self._response is None:
            assert self.body is not None
            self._response = parse_v2_response(self.body, self.header_length)
        return self._response


class Unavailable(Exception):
    """The request could not be answered in time and was not spilled (503)."""

    status = 503

    def __init__(self, reason: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class Shed(Unavailable):
    """429, with when to retry: the request could not meet its SLO, no pool slot was free, and
    the front end sheds late requests (`batching.shed_late`), or the model is loading and
    enough requests wait for it already (`batching.max_held_per_model`)."""

    status = 429

    def __init__(
        self, reason: str, *, retry_after_s: int | None = None, cause: str = "late"
    ) -> None:
        super().__init__(reason, retry_after_s=retry_after_s)
        self.cause = cause  # `late` (batching.shed_late) or `hold-full` (a model's loads held
        # batching.max_held_per_model requests already): the label of mark_inference_shed_total
