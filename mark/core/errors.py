"""Error types callers branch on (by type, never by message text)."""

from __future__ import annotations

__all__ = [
    "MarkError",
    "InvalidValue",
    "InvalidTransition",
    "NotFound",
    "Conflict",
    "InsufficientCapacity",
    "CloudError",
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


class CloudError(MarkError):
    """A cloud provider call failed in a way that is neither capacity nor not-found."""


class InsufficientCapacity(CloudError):
    """The provider could not supply the offering now (EC2 InsufficientInstanceCapacity,
    spot capacity not available); the caller tries the next pool or on-demand."""
