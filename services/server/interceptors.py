"""One place that maps domain errors to gRPC status codes and counts calls."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from services.contract.errors import DomainError, InvalidArgument
from services.server.metrics import ServerMetrics

log = logging.getLogger(__name__)
API = "grpc"
"""The ``api`` label of the request metrics this interceptor counts."""


def _code(exc: DomainError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, exc.code_name)


class _Undecodable:
    """Stands for request bytes that are not a valid message; the call then fails
    with INVALID_ARGUMENT (gRPC itself would answer UNKNOWN with a traceback)."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as exc:  # noqa: BLE001 - answered as INVALID_ARGUMENT
            return _Undecodable(exc)
    return parse


def _decoded(request: Any, method: str) -> Any:
    if isinstance(request, _Undecodable):
        raise InvalidArgument(f"the {method} request is not a valid protobuf message: "
                              f"{str(request.error)[:200]}")
    return request


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """DomainError -> its status code with the message; anything else -> INTERNAL
    (logged with its traceback). Records requests by method and code."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method.rsplit("/", 1)[-1]
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method),
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method),
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer)
        return handler

    async def _fail(self, context: grpc.aio.ServicerContext, method: str,
                    exc: Exception) -> None:
        if isinstance(exc, DomainError):
            code = _code(exc)
        else:
            log.exception("%s failed", method, exc_info=exc)
            code = grpc.StatusCode.INTERNAL
        self._metrics.requests.labels(method, code.name, API).inc()
        await context.abort(code, str(exc) if isinstance(exc, DomainError) else "internal error")

    def _done(self, method: str, start: float, context: grpc.aio.ServicerContext) -> None:
        self._metrics.request_seconds.labels(method, API).observe(time.perf_counter() - start)
        code = context.code() if hasattr(context, "code") else None
        name = code.name if isinstance(code, grpc.StatusCode) else "OK"
        self._metrics.requests.labels(method, name, API).inc()

    def _wrap_unary(self, behaviour: Callable[..., Awaitable[Any]], method: str) -> Callable:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            try:
                response = await behaviour(_decoded(request, method), context)
            except Exception as exc:
                await self._fail(context, method, exc)
                raise  # unreachable: abort raises
            self._done(method, start, context)
            return response
        return wrapped

    def _wrap_stream(self, behaviour: Callable[..., AsyncIterator[Any]], method: str) -> Callable:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            start = time.perf_counter()
            try:
                async for response in behaviour(_decoded(request, method), context):
                    yield response
            except Exception as exc:  # noqa: BLE001 - mapped to a status below
                await self._fail(context, method, exc)
                return
            self._done(method, start, context)
        return wrapped
