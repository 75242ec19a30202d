"""Error types callers branch on (by type, never by message text)."""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "MarkError",
    "InvalidValue",
    "InvalidTransition",
    "NotFound",
    "Conflict",
    "InsufficientCapacity",
    "CloudError",
    "CloudNotFound",
    "Fenced",
    "PermissionDenied",
    "DryRunOperation",
]


class MarkError(Exception):
    """Base of every error Mark raises on purpose."""


class InvalidValue(MarkError, ValueError):
    """A value the caller supplied is out of its domain; `field` names it for 4xx bodies."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class InvalidTransition(MarkError):
    """An instance was asked to move along an edge its state machine does not have."""


class NotFound(MarkError, LookupError):
    """A named thing (model, instance, instance type) does not exist."""


class Conflict(MarkError):
    """The thing being created already exists, or the change races another one."""


class Fenced(Conflict):
    """A write of a control-loop leader whose term is over: another process holds the lease
    now (`mark.adapters.db.leadership`), so the deposed one's late action is refused."""


class CloudError(MarkError):
    """A cloud provider call failed. A plain CloudError is `transient` (throttling that outlived
    botocore's retries, a dropped connection, a 5xx): the same call may succeed if made again,
    which is what `provisioner.adapters.retry.RetryingCloud` does. The subclasses below are the
    failures a retry cannot mend; callers branch on their type, never on the message."""

    transient: ClassVar[bool] = True


class InsufficientCapacity(CloudError):
    """The provider could not supply the offering now (EC2 InsufficientInstanceCapacity,
    spot capacity not available); the caller re-plans with the next pool or on-demand."""

    transient: ClassVar[bool] = False


class CloudNotFound(CloudError, NotFound):
    """The cloud says a named resource does not exist (an instance id, an AMI, a launch
    template, a subnet). Terminating an instance that is gone counts as done (the
    CloudProvider contract), so callers of `terminate` never see it."""

    transient: ClassVar[bool] = False


class PermissionDenied(CloudError):
    """The credentials lack the permission for the call (EC2 UnauthorizedOperation); the
    message names the IAM policy to attach. Retrying cannot help until an operator acts."""

    transient: ClassVar[bool] = False


class DryRunOperation(CloudError):
    """A call sent with DryRun=True that AWS checked and would have run: EC2 answers a dry
    run's success as this error (code DryRunOperation). The dry-run path catches it by type."""

    transient: ClassVar[bool] = False
