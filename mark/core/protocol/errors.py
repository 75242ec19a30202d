"""The protocol's two failures: the caller's fault (400) or the instance's (retryable)."""

from __future__ import annotations

from mark.core.errors import InvalidValue

__all__ = ["ProtocolError", "BackendError"]


class ProtocolError(InvalidValue):
    """The caller's request is malformed or does not fit the model: answered with 400."""

    def __init__(self, message: str, field: str = "request") -> None:
        super().__init__(field, message)


class BackendError(Exception):
    """An instance answered with something that is not a valid response (retryable)."""
