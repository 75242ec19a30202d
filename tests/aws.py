"""AWS at the wire for tests: moto's server on loopback (fixtures in conftest.py) and errors
injected into boto3's own request path, so parsing, retries and error handling are the real ones."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from botocore.awsrequest import AWSResponse

from provisioner.adapters.ec2 import Ec2Cloud

FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


def ec2_error_xml(code: str, message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
        f"<Code>{code}</Code><Message>{message}</Message></Error></Errors>"
        "<RequestID>8f7724cf-496f-496e-8fe3-example</RequestID></Response>"
    ).encode()


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


def inject(
    cloud: Ec2Cloud,
    operation: str,
    body: bytes,
    *,
    status: int = 400,
    times: int = 1,
    when: str = "",
) -> list[str]:
    """Answer the next `times` calls of `operation` whose request body contains `when` with
    `body`; returns the log of answers."""
    answered: list[str] = []

    def hook(request: Any, **_: Any) -> AWSResponse | None:
        body_text = request.body.decode() if isinstance(request.body, bytes) else request.body
        if len(answered) >= times or when not in (body_text or ""):
            return None
        answered.append(operation)
        return AWSResponse(request.url, status, {"Content-Type": "text/xml"}, _Raw(body))

    cloud.client.meta.events.register(f"before-send.ec2.{operation}", hook)
    return answered
