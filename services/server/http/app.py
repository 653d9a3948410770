"""Routes of the OpenAI-compatible HTTP API: JSON in -> the pure core -> JSON or SSE out.

Thin like the gRPC servicer, and in the same order: the bearer token, then
whether it may act for the request's user, then the fields (the same
validation), then the same AssistantCore. Errors are answered by
services/server/http/errors.py; calls are counted on the gRPC request metrics
with ``api="http"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.contract.auth import Authenticator, Caller
from services.contract.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    RequestTooLarge,
    ResourceExhausted,
)
from services.server.config import GenerationLimits
from services.server.core import AssistantCore
from services.server.generation import Chunk
from services.server.http.errors import (
    ClientGone,
    ModelNotFound,
    code_name,
    error_body,
    error_response,
    http_exception,
    invalid_body,
)
from services.server.http.openai_schema import (
    BASE_SUFFIX,
    ChatCompletionRequest,
    EraseRequest,
    FeedbackRequest,
    chunk_body,
    completion_body,
    models_body,
    usage_chunk_body,
)
from services.server.http.page import cors, page_routes
from services.server.lifecycle import LifecycleService, requested_by
from services.server.metrics import ServerMetrics
from services.server.validation import validate_feedback, validate_generate

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[Request, "_Call"], Awaitable[Response]]


@dataclass(frozen=True)
class HttpContext:
    """What the HTTP transport shares with gRPC, and its own bounds."""

    core: AssistantCore
    limits: GenerationLimits
    auth: Authenticator
    metrics: ServerMetrics
    model_id: str
    """The base model's id; ``<model_id>:base`` asks for no adapter."""
    max_body_bytes: int
    max_in_flight: int
    """HTTP calls in flight before 429 (gRPC's max_concurrent_rpcs)."""
    ready: Callable[[], bool]
    """True while the server accepts work (the gRPC health SERVING)."""
    alive: Callable[[], bool]
    """False once the engine failed for good."""
    cors_origins: tuple[str, ...] = ()
    """Browser origins allowed to call the API (CORS); empty: none."""
    lifecycle: LifecycleService | None = None
    """Erase (a user may erase themself); None: not offered (404)."""


@dataclass
class _Call:
    meter: _Meter
    method: str
    started: float = field(default_factory=time.perf_counter)
    streaming: bool = False
    """The SSE stream, not the handler, ends the call."""
    ended: bool = False

    def end(self, code: str) -> None:
        if self.ended:
            return
        self.ended = True
        self.meter.in_flight -= 1
        m = self.meter.metrics
        m.requests.labels(method=self.method, code=code, api="http").inc()
        if code == "OK":
            m.request_seconds.labels(method=self.method, api="http").observe(
                time.perf_counter() - self.started)


@dataclass
class _Meter:
    """Counts the HTTP calls in flight (bounded) and on the request metrics."""

    metrics: ServerMetrics
    limit: int
    in_flight: int = 0

    def begin(self, method: str) -> _Call:
        if self.in_flight >= self.limit:
            self.metrics.requests.labels(method=method, code="RESOURCE_EXHAUSTED",
                                         api="http").inc()
            raise ResourceExhausted(f"server is at its limit of {self.limit} HTTP calls; retry")
        self.in_flight += 1
        return _Call(self, method)


async def read_json(request: Request, model: type[M], limit: int) -> M:
    """The body parsed as ``model``: 413 above ``limit`` bytes, 400 if it does not parse."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    raw = bytearray()
    async for part in request.stream():
        raw += part
        if len(raw) > limit:
            raise RequestTooLarge(f"request body is over the limit of {limit} bytes")
    try:
        return model.model_validate_json(bytes(raw))
    except ValidationError as exc:
        raise invalid_body(exc) from None


async def _disconnected(request: Request) -> None:
    """Returns when the client goes away (the body has been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_gone(request: Request, work: Awaitable[list[Chunk]]) -> list[Chunk]:
    """``work``'s result; cancelled (its engine work aborted) if the client leaves first."""
    task, gone = asyncio.ensure_future(work), asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        raise ClientGone("the client closed the connection")
    return task.result()


async def _collect(stream: AsyncIterator[Chunk]) -> list[Chunk]:
    return [c async for c in stream]


class HttpApi:
    """The routes; ``app`` is the ASGI application uvicorn serves."""

    def __init__(self, ctx: HttpContext) -> None:
        self._ctx = ctx
        self._meter = _Meter(ctx.metrics, ctx.max_in_flight)
        self._created = int(time.time())
        routes = [
            Route("/health", self.health, methods=["GET"]),
            Route("/ready", self.ready, methods=["GET"]),
            Route("/v1/models", self._endpoint("ListModels", self.models), methods=["GET"]),
            Route("/v1/models/{model:path}", self._endpoint("ListModels", self.model),
                  methods=["GET"]),
            Route("/v1/chat/completions", self._endpoint("Generate", self.chat_completions),
                  methods=["POST"]),
            Route("/v1/feedback", self._endpoint("SubmitFeedback", self.feedback),
                  methods=["POST"]),
            Route("/v1/status", self._endpoint("GetUserStatus", self.status), methods=["GET"]),
            Route("/v1/erase", self._endpoint("Erase", self.erase), methods=["POST"]),
            *page_routes(),
        ]
        self.app = Starlette(routes=routes, exception_handlers={HTTPException: http_exception},
                             middleware=cors(ctx.cors_origins))

    @property
    def in_flight(self) -> int:
        return self._meter.in_flight

    def _endpoint(self, method: str, fn: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            try:
                call = self._meter.begin(method)
            except DomainError as exc:
                return error_response(exc)
            try:
                response = await fn(request, call)
            except Exception as exc:  # noqa: BLE001 - answered by errors.py (500 if not domain)
                call.end(code_name(exc))
                return error_response(exc)
            if not call.streaming:
                call.end("OK")
            return response
        return handler

    # --- who the call acts for ------------------------------------------------------------

    def _caller(self, request: Request) -> Caller:
        return self._ctx.auth.authenticate(request.headers.items())

    def _act_for(self, caller: Caller, user: str | None, labeler: str = "") -> str:
        """The user a call acts for: the token's subject, or ``user`` (auth off, admin)."""
        if not user:
            if not caller.admin:
                user = caller.subject
            elif self._ctx.auth.enabled:
                raise InvalidArgument("an admin token acts for any user: name one in 'user'")
            else:
                raise InvalidArgument("'user' is required: authentication is off, so the "
                                      "request names its user (with auth on, the api key "
                                      "does)")
        self._ctx.auth.authorize(caller, user, labeler)
        return user

    def _base_model(self, model: str) -> bool:
        """True for ``<model_id>:base``, False for ``<model_id>``; 404 otherwise."""
        if model == self._ctx.model_id:
            return False
        if model == self._ctx.model_id + BASE_SUFFIX:
            return True
        raise ModelNotFound(f"model {model[:80]!r} does not exist: use {self._ctx.model_id!r} "
                            f"(your adapter) or '{self._ctx.model_id}{BASE_SUFFIX}' (the base "
                            "model); GET /v1/models lists them")

    # --- routes --------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        ok = self._ctx.alive()
        return JSONResponse({"status": "ok" if ok else "engine failed"},
                            status_code=200 if ok else 503)

    async def ready(self, request: Request) -> Response:
        ok = self._ctx.ready() and self._ctx.alive()
        return JSONResponse({"status": "ready" if ok else "not ready"},
                            status_code=200 if ok else 503)

    async def models(self, request: Request, call: _Call) -> Response:
        self._caller(request)
        return JSONResponse(models_body(self._ctx.model_id, self._created))

    async def model(self, request: Request, call: _Call) -> Response:
        self._caller(request)
        name = request.path_params["model"]
        self._base_model(name)
        body = models_body(self._ctx.model_id, self._created)["data"]
        return JSONResponse(next(m for m in body if m["id"] == name))

    async def chat_completions(self, request: Request, call: _Call) -> Response:
        caller = self._caller(request)
        body = await read_json(request, ChatCompletionRequest, self._ctx.max_body_bytes)
        base = self._base_model(body.model)
        user = self._act_for(caller, body.user)
        body.refuse_unsupported()
        params = validate_generate(
            user, [m.to_message() for m in body.messages], body.n or 0,
            body.completion_tokens, body.temperature, body.top_p, body.seed,
            self._ctx.limits, base_model=base)
        stream = self._ctx.core.generate(params)
        created = int(time.time())
        if not body.stream:
            chunks = await _unless_gone(request, _collect(stream))
            return JSONResponse(completion_body(chunks, body.model, created))
        first = await anext(stream)  # failures before the first piece get their own status
        call.streaming = True
        return EventSourceResponse(self._events(first, stream, body, created, call), sep="\n",
                                   background=BackgroundTask(_close, stream, call))

    async def _events(self, first: Chunk, stream: AsyncIterator[Chunk],
                      body: ChatCompletionRequest, created: int,
                      call: _Call) -> AsyncIterator[str]:
        """SSE data: one chunk per piece, the usage chunk if asked, then ``[DONE]``. A
        failure after the first piece is sent as an OpenAI error event."""
        seen: set[int] = set()
        finals: list[Chunk] = []
        code = "OK"
        try:
            chunk: Chunk | None = first
            while chunk is not None:
                yield json.dumps(chunk_body(chunk, body.model, created,
                                            chunk.candidate_index not in seen,
                                            body.include_usage))
                seen.add(chunk.candidate_index)
                if chunk.finished:
                    finals.append(chunk)
                chunk = await anext(stream, None)
            if body.include_usage:
                yield json.dumps(usage_chunk_body(first.response_id, finals, body.model,
                                                  created))
            yield "[DONE]"
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception as exc:  # noqa: BLE001 - the stream has begun: an error event
            code = code_name(exc)
            yield json.dumps(error_body(exc)[1])
        finally:
            call.end(code)

    async def feedback(self, request: Request, call: _Call) -> Response:
        caller = self._caller(request)
        body = await read_json(request, FeedbackRequest, self._ctx.max_body_bytes)
        user = self._act_for(caller, body.user, body.labeler_id or "")
        kind, ids, up = body.kind_and_ids()
        key = request.headers.get("idempotency-key", "")
        if key and body.feedback_id and key != body.feedback_id:
            raise InvalidArgument("the Idempotency-Key header and feedback_id differ")
        params = validate_feedback(user, body.labeler_id or "", body.feedback_id or key,
                                   kind, ids, up)
        result = await self._ctx.core.submit_feedback(params)
        return JSONResponse({"object": "feedback", "feedback_id": result.feedback_id,
                             "partition": result.partition, "offset": result.offset})

    async def status(self, request: Request, call: _Call) -> Response:
        caller = self._caller(request)
        user = self._act_for(caller, request.query_params.get("user"))
        view = self._ctx.core.user_status(user)
        return JSONResponse({"object": "user_status", **asdict(view)})


    async def erase(self, request: Request, call: _Call) -> Response:
        """The gRPC Erase: the user's own token (or an admin's, naming ``user``)."""
        caller = self._caller(request)
        body = await read_json(request, EraseRequest, self._ctx.max_body_bytes)
        user = self._act_for(caller, body.user)
        if self._ctx.lifecycle is None:
            raise FailedPrecondition("erasure is not enabled on this server")
        out = await self._ctx.lifecycle.erase(user, requested_by(caller))
        return JSONResponse({"object": "erasure", **asdict(out)})


async def _close(stream: Any, call: _Call) -> None:
    """After an SSE response, however it ended: the call counted, the engine work stopped."""
    call.end("CANCELLED")
    await stream.aclose()
