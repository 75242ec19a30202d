"""JSON errors for every caller mistake: `{"error": "...", "field": ...}` with a 4xx, never a 500.

One handler maps Mark's typed errors and pydantic's validation errors to statuses, so each route
just raises.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sanic import Request, Sanic
from sanic.exceptions import SanicException
from sanic.response import HTTPResponse, json

from mark.core.errors import Conflict, InvalidTransition, InvalidValue, NotFound

__all__ = ["error_response", "install_error_handlers", "validation_details"]


def error_response(status: int, message: str, **extra: Any) -> HTTPResponse:
    return json({"error": message, **extra}, status=status)


def validation_details(exc: ValidationError) -> list[dict[str, str]]:
    """Field path and message per error; a cross-field check that raised InvalidValue names
    its own field (pydantic would only say "body")."""
    details = []
    for e in exc.errors(include_url=False):
        cause = e.get("ctx", {}).get("error")
        if isinstance(cause, InvalidValue):
            details.append({"field": cause.field, "message": cause.message})
        else:
            field = ".".join(str(p) for p in e["loc"]) or "body"
            details.append({"field": field, "message": e["msg"]})
    return details


def _handle(request: Request, exc: Exception) -> HTTPResponse:
    if isinstance(exc, ValidationError):
        details = validation_details(exc)
        first = details[0]
        return error_response(
            422, f"{first['field']}: {first['message']}", field=first["field"], details=details
        )
    if isinstance(exc, InvalidValue):
        return error_response(422, str(exc), field=exc.field)
    if isinstance(exc, NotFound):
        return error_response(404, str(exc))
    if isinstance(exc, Conflict | InvalidTransition):
        return error_response(409, str(exc))
    if isinstance(exc, SanicException):
        status = exc.status_code
        message = str(exc) or exc.__class__.__name__
        if status == 413:
            message = "request body is larger than the configured limit (server.max_body_mb)"
        return error_response(status, message)
    request.app.ctx.logger.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(500, "internal error")


def install_error_handlers(app: Sanic) -> None:
    app.error_handler.add(Exception, _handle)
