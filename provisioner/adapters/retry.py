"""One retry layer for cloud calls, as a CloudProvider that wraps another (Karpenter's
`metrics.Decorate`: a cross-cutting concern wraps the interface instead of living in each
provider and each caller).

Retries happen at two levels and no third: botocore's standard retry mode retries throttling
and 5xx of one HTTP call at the wire (`cloud.api_max_attempts`); `RetryingCloud` retries a
provider method that still failed with a transient `CloudError` (`control.apply_retries`), with
exponential backoff and full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter":
each delay is uniform in [0, min(max_delay_s, base_delay_s * 2**attempt)], so that many
callers throttled together do not come back together).

Errors a retry cannot mend are raised at once, by type (`CloudError.transient` is False):
`InsufficientCapacity` (the caller re-plans with another pool), `CloudNotFound`,
`PermissionDenied`, `DryRunOperation`. Errors that are not `CloudError` are not the cloud's
and pass through.

Retrying `launch` is safe by the CloudProvider contract: a failed launch leaves nothing paid
behind (and reconciliation terminates, by its ownership tag, any instance that escaped).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

from mark.core.errors import CloudError, InvalidValue
from mark.core.types import Instance, InstanceType, Offering
from provisioner.adapters.cloud import CloudProvider, InterruptionNotice

__all__ = ["RetryingCloud"]

log = logging.getLogger("mark.cloud.retry")

T = TypeVar("T")


class RetryingCloud:
    """`inner` with each call retried up to `retries` times on a transient CloudError, after a
    delay drawn uniformly from [0, min(max_delay_s, base_delay_s * 2**attempt)] (attempt 0
    first) and waited with `sleep`; after the last attempt the error is re-raised.

    `interruptions` and `close` pass straight through: the stream polls on its own schedule and
    outlives any one failure, and closing is not worth a wait."""

    def __init__(
        self,
        inner: CloudProvider,
        *,
        retries: int,
        base_delay_s: float = 0.1,
        max_delay_s: float = 5.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if retries < 0:
            raise InvalidValue("retries", f"must be >= 0, got {retries}")
        self.inner = inner
        self.name = inner.name
        self.retries = retries
        self._base_delay_s = base_delay_s
        self._max_delay_s = max_delay_s
        self._sleep = sleep

    async def _retried(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        for attempt in range(self.retries):
            try:
                return await call()
            except CloudError as exc:
                if not exc.transient:
                    raise
                delay_s = random.uniform(
                    0.0, min(self._max_delay_s, self._base_delay_s * 2.0**attempt)
                )
                log.warning(
                    "%s %s failed (attempt %d of %d), retrying in %.2f s: %s",
                    self.name,
                    what,
                    attempt + 1,
                    self.retries + 1,
                    delay_s,
                    exc,
                )
                await self._sleep(delay_s)
        return await call()

    async def instance_types(self) -> list[InstanceType]:
        return await self._retried("instance_types", self.inner.instance_types)

    async def offerings(self) -> list[Offering]:
        return await self._retried("offerings", self.inner.offerings)

    async def launch(self, offering: Offering, models: Sequence[str]) -> Instance:
        return await self._retried(
            f"launch of {offering.key}", lambda: self.inner.launch(offering, models)
        )

    async def terminate(self, instance_id: str) -> None:
        await self._retried(f"terminate {instance_id}", lambda: self.inner.terminate(instance_id))

    async def list(self) -> list[Instance]:
        return await self._retried("list", self.inner.list)

    def interruptions(self) -> AsyncIterator[InterruptionNotice]:
        return self.inner.interruptions()

    async def close(self) -> None:
        await self.inner.close()


_: type[CloudProvider] = RetryingCloud
