"""`LambdaPool`: AWS Lambda through boto3 `invoke` (RequestResponse, `LogType=Tail` so the
REPORT line gives the billed duration, the memory size and the init duration of a cold start).
With `endpoint_url` it reaches the local pool's Invoke API the same way (front-end processes
spill through it to the control plane's local pool).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import boto3
from botocore import UNSIGNED
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from mark.core.config import ServerlessConfig
from mark.core.errors import CloudError
from provisioner.adapters.serverless.pool import (
    FunctionError,
    Invocation,
    PayloadTooLarge,
    PoolStats,
    Throttled,
    billed_duration_ms,
    load_pricing,
    ping_warm,
)
from provisioner.policy.spill import ServerlessProfile

if TYPE_CHECKING:
    from mark.core.catalog import LambdaPricing

__all__ = ["LambdaPool"]

_REPORT_FIELDS = {
    "duration_ms": re.compile(r"(?<!Billed )(?<!Init )Duration: ([\d.]+) ms"),
    "billed_ms": re.compile(r"Billed Duration: ([\d.]+) ms"),
    "memory_mb": re.compile(r"Memory Size: (\d+) MB"),
    "max_memory_used_mb": re.compile(r"Max Memory Used: (\d+) MB"),
    "init_ms": re.compile(r"Init Duration: ([\d.]+) ms"),
}


def _report(log_result: str | None) -> dict[str, float]:
    """The numbers of the REPORT line in Lambda's base64 log tail."""
    if not log_result:
        return {}
    text = base64.b64decode(log_result).decode(errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith("REPORT ")), "")
    return {
        key: float(match.group(1))
        for key, pattern in _REPORT_FIELDS.items()
        if (match := pattern.search(line))
    }


class LambdaPool:
    """AWS Lambda (or the local pool's Invoke API, by `endpoint_url`) through boto3."""

    name = "lambda"

    def __init__(
        self,
        config: ServerlessConfig,
        *,
        endpoint_url: str | None = None,
        pricing: LambdaPricing | None = None,
        client: Any | None = None,
        unsigned: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.memory_mb = config.memory_mb
        self.pricing = pricing if pricing is not None else load_pricing()
        retries = {"mode": "standard", "total_max_attempts": config.api_max_attempts}
        # The local pool's Invoke API needs no credentials: unsigned requests reach it.
        signing = {"signature_version": UNSIGNED} if unsigned else {}
        self.client = (
            client
            if client is not None
            else boto3.session.Session().client(
                "lambda",
                region_name=config.region,
                endpoint_url=endpoint_url or config.endpoint_url,
                config=BotoConfig(retries=retries, read_timeout=config.timeout_s + 5, **signing),
            )
        )
        self._clock = clock
        self.observed = PoolStats(cold_start_ms=self.pricing.cold_start_ms)

    async def invoke(self, event: Mapping[str, Any]) -> Invocation:
        body = json.dumps(event).encode()
        limit = self.pricing.max_sync_payload_bytes
        if len(body) > limit:
            raise PayloadTooLarge(f"request payload {len(body)} bytes is over {limit} bytes")
        model = str(event.get("model", ""))
        self.observed.started(model, self._clock())
        started = time.perf_counter()
        invocation: Invocation | None = None
        try:
            invocation = await self._invoke(body)
            return invocation
        finally:
            wall_ms = (time.perf_counter() - started) * 1000.0
            self.observed.finished(model, wall_ms, invocation)

    async def _invoke(self, body: bytes) -> Invocation:
        try:
            answer = await asyncio.to_thread(
                self.client.invoke,
                FunctionName=self.config.function_name,
                InvocationType="RequestResponse",
                LogType="Tail",
                Payload=body,
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            message = exc.response.get("Error", {}).get("Message", "")
            if code == "TooManyRequestsException":
                raise Throttled(f"Lambda throttled the invocation: {message}") from exc
            if code in {"RequestTooLargeException", "RequestEntityTooLargeException"}:
                raise PayloadTooLarge(message) from exc
            raise CloudError(f"Lambda Invoke failed ({code}): {message}") from exc
        except BotoCoreError as exc:
            raise CloudError(f"Lambda Invoke failed: {exc}") from exc
        payload = await asyncio.to_thread(answer["Payload"].read)
        result = json.loads(payload) if payload else {}
        if answer.get("FunctionError"):
            raise FunctionError(
                str(result.get("errorType", answer["FunctionError"])),
                str(result.get("errorMessage", payload[:200])),
            )
        report = _report(answer.get("LogResult"))
        duration_ms = report.get("duration_ms", float(result.get("handler_ms", 0.0)))
        init_ms = report.get("init_ms", 0.0)
        memory_mb = int(report.get("memory_mb", self.memory_mb))
        billed_ms = report.get(
            "billed_ms",
            billed_duration_ms(duration_ms + init_ms, self.pricing.billing_granularity_ms),
        )
        headers = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        return Invocation(
            request_id=str(headers.get("x-amzn-requestid", "")),
            result=result,
            duration_ms=duration_ms,
            init_ms=init_ms,
            billed_ms=billed_ms,
            memory_mb=memory_mb,
            max_memory_used_mb=report.get("max_memory_used_mb", 0.0),
            cost_usd=self.pricing.charge_usd(billed_ms, memory_mb, self.config.arm),
        )

    def profile(self, model: str, default_warm_ms: float) -> ServerlessProfile:
        """Lambda does not say how many sandboxes are warm: estimate them as the model's peak
        concurrency seen within `keep_warm_s`, less what is in flight now."""
        in_flight = self.observed.in_flight.get(model, 0)
        peak, at_s = self.observed.recent_peak.get(model, (0, 0.0))
        warm = peak if self._clock() - at_s <= self.config.keep_warm_s else 0
        return ServerlessProfile(
            warm_ms=self.observed.warm_ms.get(model, default_warm_ms),
            cold_start_ms=self.observed.cold_start_ms,
            idle_warm=max(warm - in_flight, 0),
            free_slots=max(self.config.concurrency - self.observed.total_in_flight(), 0),
        )

    async def warm(self, model: str, artifact: str, count: int) -> list[Invocation]:
        return await ping_warm(self, model, artifact, count, self.config.concurrency)

    async def close(self) -> None:
        await asyncio.to_thread(self.client.close)
