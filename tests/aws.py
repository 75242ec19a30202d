"""AWS at the wire for tests: moto's server on loopback (fixtures in conftest.py) and errors
injected into boto3's own request path, so parsing, retries and error handling are the real ones."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime
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


def spot_requests_xml(
    instance_id: str,
    code: str,
    *,
    update_time: datetime | None = None,
    next_token: str | None = None,
) -> bytes:
    """A DescribeSpotInstanceRequests page with one request in status `code` (what AWS shows
    two minutes before it reclaims: `marked-for-termination`), which moto never sets."""
    updated = f"<updateTime>{update_time.isoformat()}</updateTime>" if update_time else ""
    token = f"<nextToken>{next_token}</nextToken>" if next_token else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<DescribeSpotInstanceRequestsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
        "<requestId>1d1a2f56-example</requestId><spotInstanceRequestSet><item>"
        f"<spotInstanceRequestId>sir-{code}</spotInstanceRequestId><state>active</state>"
        f"<status><code>{code}</code>{updated}</status>"
        f"<instanceId>{instance_id}</instanceId><type>one-time</type></item>"
        f"</spotInstanceRequestSet>{token}</DescribeSpotInstanceRequestsResponse>"
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
