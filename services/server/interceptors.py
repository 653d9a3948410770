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
    (logged with its traceback). Records requests by method and code.

    grpc.aio asks the interceptor for every call; a method's wrapped handler is built
    once and reused while the server hands out the same handler for it."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        cached = self._wrapped.get(details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, details.method.rsplit("/", 1)[-1])
        self._wrapped[details.method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
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
        self._metrics.requests_by(method, code.name, API).inc()
        await context.abort(code, str(exc) if isinstance(exc, DomainError) else "internal error")

    def _on_done(self, method: str) -> Callable[[float, grpc.aio.ServicerContext], None]:
        """Records a call that returned: its duration, and its code (OK unless the
        method set one on the context)."""
        seconds = self._metrics.request_seconds_by(method, API)
        ok = self._metrics.requests_by(method, "OK", API)

        def done(start: float, context: grpc.aio.ServicerContext) -> None:
            seconds.observe(time.perf_counter() - start)
            code = context.code() if hasattr(context, "code") else None
            if isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK:
                self._metrics.requests_by(method, code.name, API).inc()
            else:
                ok.inc()
        return done

    def _wrap_unary(self, behaviour: Callable[..., Awaitable[Any]], method: str) -> Callable:
        done = self._on_done(method)

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            try:
                response = await behaviour(_decoded(request, method), context)
            except Exception as exc:
                await self._fail(context, method, exc)
                raise  # unreachable: abort raises
            done(start, context)
            return response
        return wrapped

    def _wrap_stream(self, behaviour: Callable[..., AsyncIterator[Any]], method: str) -> Callable:
        done = self._on_done(method)

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            start = time.perf_counter()
            try:
                async for response in behaviour(_decoded(request, method), context):
                    yield response
            except Exception as exc:  # noqa: BLE001 - mapped to a status below
                await self._fail(context, method, exc)
                return
            done(start, context)
        return wrapped
