"""Domain errors raised by the pure core; one interceptor maps them to gRPC codes,
one handler (services/server/http/errors.py) to HTTP status codes."""

from __future__ import annotations


class DomainError(Exception):
    """Base of errors that reach the client with a precise status and message."""

    code_name = "INTERNAL"


class InvalidArgument(DomainError):
    code_name = "INVALID_ARGUMENT"


class ContextTooLong(InvalidArgument):
    """The prompt plus the completion asked for do not fit the model's context."""


class RequestTooLarge(InvalidArgument):
    """The request itself is bigger than the server accepts."""


class NotFound(DomainError):
    code_name = "NOT_FOUND"


class PermissionDenied(DomainError):
    code_name = "PERMISSION_DENIED"


class Unauthenticated(DomainError):
    code_name = "UNAUTHENTICATED"


class Unavailable(DomainError):
    code_name = "UNAVAILABLE"


class ResourceExhausted(DomainError):
    code_name = "RESOURCE_EXHAUSTED"


class FailedPrecondition(DomainError):
    code_name = "FAILED_PRECONDITION"
