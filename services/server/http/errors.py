"""The one place that maps domain errors to HTTP status codes and OpenAI's error shape:
``{"error": {"message", "type", "param", "code"}}``.

Every DomainError keeps its gRPC code name (the label the request metrics carry
on both APIs); anything else is a bug: 500, logged with its traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from services.contract.errors import (
    ContextTooLong,
    DomainError,
    InvalidArgument,
    RequestTooLarge,
)

log = logging.getLogger(__name__)

# gRPC code name -> (HTTP status, OpenAI error type)
_BY_CODE: dict[str, tuple[int, str]] = {
    "INVALID_ARGUMENT": (400, "invalid_request_error"),
    "FAILED_PRECONDITION": (400, "invalid_request_error"),
    "UNAUTHENTICATED": (401, "authentication_error"),
    "PERMISSION_DENIED": (403, "permission_error"),
    "NOT_FOUND": (404, "not_found_error"),
    "RESOURCE_EXHAUSTED": (429, "rate_limit_error"),
    "UNAVAILABLE": (503, "service_unavailable_error"),
    "CANCELLED": (499, "client_closed_request"),
}
_INTERNAL = (500, "server_error")


class ModelNotFound(DomainError):
    """The request names a model this server does not serve."""

    code_name = "NOT_FOUND"


class ClientGone(DomainError):
    """The client closed the connection before its answer was ready."""

    code_name = "CANCELLED"


def invalid_body(exc: ValidationError) -> InvalidArgument:
    """A body that does not parse, as InvalidArgument naming the first bad field."""
    err = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in err.get("loc", ())) or "body"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return InvalidArgument(f"{where}: {err.get('msg', 'invalid')}{more}")


def code_name(exc: BaseException) -> str:
    """The gRPC code name an exception is answered with (the metrics' ``code``)."""
    return exc.code_name if isinstance(exc, DomainError) else "INTERNAL"


def _code(exc: DomainError) -> str | None:
    if isinstance(exc, ContextTooLong):
        return "context_length_exceeded"
    if isinstance(exc, RequestTooLarge):
        return "request_too_large"
    if isinstance(exc, ModelNotFound):
        return "model_not_found"
    if exc.code_name == "UNAUTHENTICATED":
        return "invalid_api_key"
    return None


def error_body(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """(HTTP status, OpenAI error body) for ``exc``."""
    if not isinstance(exc, DomainError):
        log.error("HTTP request failed", exc_info=exc)
        status, kind = _INTERNAL
        return status, {"error": {"message": "internal error", "type": kind, "param": None,
                                  "code": None}}
    status, kind = _BY_CODE.get(exc.code_name, _INTERNAL)
    if isinstance(exc, RequestTooLarge):
        status = 413
    return status, {"error": {"message": str(exc), "type": kind, "param": None,
                              "code": _code(exc)}}


def error_response(exc: BaseException) -> JSONResponse:
    status, body = error_body(exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


async def http_exception(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (unknown route, method not allowed) in OpenAI's shape."""
    status = getattr(exc, "status_code", 500)
    detail = getattr(exc, "detail", "") or "error"
    kind = "not_found_error" if status == 404 else "invalid_request_error"
    if status >= 500:
        return error_response(exc)
    return JSONResponse({"error": {"message": f"{request.method} {request.url.path}: {detail}",
                                   "type": kind, "param": None, "code": None}},
                        status_code=status)
