"""The seam to a cloud: one short interface of verbs, with real implementations behind it
(`provisioner.adapters.local_cloud.LocalCloud`, `provisioner.adapters.ec2.Ec2Cloud`) and one
wrapper (`provisioner.adapters.retry.RetryingCloud`, the retry layer for cloud calls).

Contracts every implementation keeps:
- every failure is a `mark.core.errors.CloudError`, typed by what the caller should do:
  `InsufficientCapacity` when the offering can't be had now (the caller re-plans with the next
  pool or on-demand), `CloudNotFound` for a named resource that does not exist,
  `PermissionDenied` for missing credentials' rights; a plain CloudError is transient (the same
  call may succeed again).
- `launch` returns the instance in state PENDING (or RUNNING when it is already serving). An
  instance that a failed launch may have created is terminated by the provider before it
  raises, so that nothing paid is left untracked.
- `terminate` of an instance that is already gone succeeds (Karpenter's rule: not-found is done).
- `list` returns every live instance the provider holds that Mark launched (by ownership tag),
  including ones this process did not launch (after a crash), so reconciliation can adopt them.
- `interruptions` yields notices as they arrive (spot two-minute warnings, scheduled
  retirement); the control loop replaces and drains on each.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from mark.core.types import Instance, InstanceType, Offering

__all__ = ["CloudProvider", "InterruptionNotice", "OWNER_TAG", "MODELS_TAG"]

OWNER_TAG = "mark:owner"
MODELS_TAG = "mark:models"


@dataclass(frozen=True, slots=True)
class InterruptionNotice:
    instance_id: str
    at_s: float
    terminate_at_s: float
    reason: str


@runtime_checkable
class CloudProvider(Protocol):
    name: str

    async def instance_types(self) -> list[InstanceType]:
        """Facts about the types this provider can launch (catalog or the cloud's API)."""
        ...

    async def offerings(self) -> list[Offering]:
        """Every (type, zone, market) with its current price; unavailable ones included."""
        ...

    async def launch(self, offering: Offering, models: Sequence[str]) -> Instance: ...

    async def terminate(self, instance_id: str) -> None: ...

    async def list(self) -> list[Instance]: ...

    def interruptions(self) -> AsyncIterator[InterruptionNotice]: ...

    async def close(self) -> None:
        """Release everything the provider holds in this process (local workers are killed)."""
        ...
