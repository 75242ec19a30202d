"""JSON errors for every caller mistake: `{"error": "...", "field": ...}` with a 4xx, never a 500.

One handler maps Mark's typed errors and pydantic's validation errors to statuses, so each route
just raises.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sanic import Request, Sanic
from sanic.constants import HTTP_METHODS
from sanic.exceptions import MethodNotAllowed, SanicException
from sanic.response import HTTPResponse, json

from mark.core.errors import Conflict, InvalidTransition, InvalidValue, NotFound

__all__ = ["error_response", "install_error_handlers", "validation_details"]


def error_response(status: int, message: str, **extra: Any) -> HTTPResponse:
    return json({"error": message, **extra}, status=status)


def validation_details(exc: ValidationError) -> list[dict[str, str]]:
    """Field path and message per error; a cross-field check that raised InvalidValue names
    its own field (pydantic would only say "body"), under the path of the value it checked (a
    bulk body's `models.3.` before a model's `slo.latency_ms`)."""
    details = []
    for e in exc.errors(include_url=False):
        path = [str(p) for p in e["loc"]]
        cause = e.get("ctx", {}).get("error")
        if isinstance(cause, InvalidValue):
            details.append({"field": ".".join([*path, cause.field]), "message": cause.message})
        else:
            details.append({"field": ".".join(path) or "body", "message": e["msg"]})
    return details


def _allowed_methods(request: Request) -> list[str]:
    """The methods this request's path answers, asked of the router one by one (only on a 405,
    so the cost is of no matter)."""
    allowed = []
    for method in HTTP_METHODS:
        try:
            request.app.router.get(request.path, method, request.host)
        except SanicException:
            continue
        allowed.append(str(method))
    return allowed


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
        response = error_response(status, message)
        # Sanic puts what the status needs on the exception (`Retry-After` where one is given,
        # `Allow` on a 405 of a static path); a 405 needs `Allow` (RFC 9110 15.5.6), which
        # Sanic leaves out for a path with a parameter.
        response.headers.update(exc.headers or {})
        if isinstance(exc, MethodNotAllowed) and "allow" not in response.headers:
            response.headers["Allow"] = ", ".join(_allowed_methods(request))
        return response
    request.app.ctx.logger.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(500, "internal error")


def install_error_handlers(app: Sanic) -> None:
    app.error_handler.add(Exception, _handle)
