"""EC2's error codes and the typed Mark error each one becomes, so that callers branch on the
error's type (`InsufficientCapacity`, `CloudNotFound`, `PermissionDenied`, `DryRunOperation`,
a transient `CloudError`) and never on `__cause__` codes or message text.

The codes are from the EC2 API error reference and the CreateFleet/RunInstances error codes.
"""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError

from mark.core.errors import (
    CloudError,
    CloudNotFound,
    DryRunOperation,
    InsufficientCapacity,
    PermissionDenied,
)

__all__ = [
    "CAPACITY_ERROR_CODES",
    "THROTTLE_ERROR_CODES",
    "mapped_error",
]

# A pool cannot supply the instance now; the caller re-plans with another pool or on-demand.
CAPACITY_ERROR_CODES = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientCapacity",
        "InsufficientHostCapacity",
        "SpotMaxPriceTooLow",
        "MaxSpotInstanceCountExceeded",
        "UnfulfillableCapacity",
        "InsufficientFreeAddressesInSubnet",
    }
)
# Retried by botocore's standard retry mode first; what outlives it is a transient CloudError.
THROTTLE_ERROR_CODES = frozenset(
    {"RequestLimitExceeded", "Throttling", "ThrottlingException", "RequestThrottled"}
)
_NOT_FOUND_CODES = frozenset(
    {
        "InvalidInstanceID.NotFound",
        "InvalidAMIID.NotFound",
        "InvalidLaunchTemplateName.NotFoundException",
        "InvalidLaunchTemplateId.NotFound",
        "InvalidSubnetID.NotFound",
        "InvalidGroup.NotFound",
    }
)
_UNAUTHORIZED_CODES = frozenset({"UnauthorizedOperation", "AuthFailure", "AccessDenied"})
_IAM_HINT = "attach deploy/iam/mark-ec2-policy.json to the role or user Mark runs as"


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def mapped_error(operation: str, exc: ClientError | BotoCoreError) -> CloudError:
    """The Mark error for a failed EC2 call. BotoCoreError (no answer: connection refused,
    timed out, a broken response) is transient."""
    if isinstance(exc, BotoCoreError):
        return CloudError(f"EC2 {operation} failed: {exc}")
    code = _error_code(exc)
    message = exc.response.get("Error", {}).get("Message", "")
    if code in CAPACITY_ERROR_CODES:
        return InsufficientCapacity(f"EC2 {operation}: {code}: {message}")
    if code in _NOT_FOUND_CODES:
        return CloudNotFound(f"EC2 {operation}: {code}: {message}")
    if code in _UNAUTHORIZED_CODES:
        return PermissionDenied(
            f"EC2 denied {operation} ({code}): the credentials lack the permission; "
            f"{_IAM_HINT}. {message}"
        )
    if code == "DryRunOperation":
        return DryRunOperation(f"EC2 {operation} would have succeeded (DryRun=True)")
    if code in THROTTLE_ERROR_CODES:
        return CloudError(f"EC2 {operation} still throttled after botocore's retries ({code})")
    return CloudError(f"EC2 {operation} failed ({code}): {message}")
