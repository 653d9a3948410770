"""What SubmitFeedback's per-call path caches or shortcuts still behaves as before: the
interceptor's wrapped handlers, cached metric series, HMAC keyed states, the shared
JSON encoder of records, and DurableProducer's acknowledgement timer."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from prometheus_client import generate_latest

from services.contract.config import KafkaConfig
from services.contract.errors import NotFound, Unavailable
from services.contract.records import FeedbackRecord, GenerationRecord
from services.server.interceptors import ErrorMappingInterceptor
from services.server.kafka_io import DurableProducer
from services.server.metrics import ServerMetrics
from services.server.response_ids import ResponseRef, ResponseSigner, _b64

METHOD = "/personalize.v1.Assistant/SubmitFeedback"


class _Details:
    def __init__(self, method: str = METHOD) -> None:
        self.method = method
        self.invocation_metadata = ()


class _Context:
    def __init__(self, code: grpc.StatusCode | None = None) -> None:
        self._code = code
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def code(self) -> grpc.StatusCode | None:
        return self._code

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise grpc.aio.AbortError()


def _handler(behaviour: Callable[..., Any]) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(behaviour, request_deserializer=bytes,
                                               response_serializer=bytes)


def _sample(metrics: ServerMetrics, line_start: str) -> float:
    text = generate_latest(metrics.registry).decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(line_start))


def test_wrapped_handler_is_built_once_per_handler_and_counts_every_call() -> None:
    metrics = ServerMetrics()
    interceptor = ErrorMappingInterceptor(metrics)

    async def ok(request: bytes, _context: object) -> bytes:
        return request

    async def missing(_request: bytes, _context: object) -> bytes:
        raise NotFound("no such user")

    current = {"handler": _handler(ok)}

    async def continuation(_details: object) -> grpc.RpcMethodHandler:
        return current["handler"]

    async def call(context: _Context) -> Any:
        wrapped = await interceptor.intercept_service(continuation, _Details())
        return wrapped, await wrapped.unary_unary(b"x", context)

    async def main() -> None:
        first, out = await call(_Context())
        second, _ = await call(_Context(grpc.StatusCode.OK))
        assert out == b"x" and first is second  # 1. reused while the handler is the same
        await call(_Context(grpc.StatusCode.CANCELLED))  # a code the method set itself
        current["handler"] = _handler(missing)
        context = _Context()
        third = await interceptor.intercept_service(continuation, _Details())
        assert third is not first  # 2. rebuilt when the server hands out another
        with pytest.raises(grpc.aio.AbortError):
            await third.unary_unary(b"x", context)
        assert context.aborted == (grpc.StatusCode.NOT_FOUND, "no such user")

    asyncio.run(main())
    # 3. the same series as before: requests by method, code and api; durations
    base = 'personalize_server_requests_total{api="grpc",code="%s",method="SubmitFeedback"}'
    assert _sample(metrics, base % "OK") == 2
    assert _sample(metrics, base % "CANCELLED") == 1
    assert _sample(metrics, base % "NOT_FOUND") == 1
    assert _sample(metrics, 'personalize_server_request_duration_seconds_count'
                   '{api="grpc",method="SubmitFeedback"}') == 3


def test_unknown_methods_pass_through() -> None:
    interceptor = ErrorMappingInterceptor(ServerMetrics())

    async def nothing(_details: object) -> None:
        return None

    assert asyncio.run(interceptor.intercept_service(nothing, _Details("/x.Y/Z"))) is None


def test_cached_series_are_the_metrics_own() -> None:
    metrics = ServerMetrics()
    child = metrics.feedback_by("accepted", "thumbs")
    assert child is metrics.feedback_by("accepted", "thumbs")
    assert child is metrics.feedback.labels("accepted", "thumbs")
    child.inc()
    metrics.observe_produce("feedback", 0.002, ok=True)
    assert _sample(metrics, 'personalize_server_feedback_total'
                   '{reason="thumbs",result="accepted"}') == 1
    assert _sample(metrics, 'personalize_server_kafka_produce_duration_seconds_count'
                   '{topic="feedback"}') == 1


def test_signatures_are_plain_truncated_hmac_sha256_and_keys_do_not_drift() -> None:
    key_a, key_b = b"a" * 32, b"b" * 32
    signer = ResponseSigner([key_a, key_b])
    for i in range(3):  # the keyed state is copied, never advanced by a previous id
        ref = ResponseRef("alice", f"g{i}", i, 1000 + i)
        rid = signer.sign(ref)
        _prefix, payload_b64, signature_b64 = rid.split(".")
        payload = f"alice\x1fg{i}\x1f{i}\x1f{1000 + i}".encode()
        assert payload_b64 == _b64(payload)
        assert signature_b64 == _b64(hmac.new(key_a, payload, hashlib.sha256).digest()[:16])
        assert signer.verify(rid, "alice") == ref
    old = ResponseSigner([key_b]).sign(ResponseRef("alice", "g", 0, 1))
    assert signer.verify(old, "alice").group_id == "g"  # the second key still verifies


def test_record_bytes_are_compact_utf8_json_in_field_order() -> None:
    record = FeedbackRecord(feedback_id="f1", user_id="zoë", labeler_id="zoë", kind="thumbs",
                            response_ids=["r1"], group_id="g", created_at=1.5, up=True)
    assert record.to_json() == (
        '{"schema_version":1,"type":"feedback","feedback_id":"f1","user_id":"zoë",'
        '"labeler_id":"zoë","kind":"thumbs","response_ids":["r1"],"group_id":"g",'
        '"created_at":1.5,"up":true}').encode()
    generation = GenerationRecord(
        response_id="r", group_id="g", user_id="u", candidate_index=0, num_candidates=1,
        messages=[{"role": "user", "content": "hé\n"}], prompt_token_ids=[1], completion="ok",
        completion_token_ids=[2], finish_reason="stop", adapter_version="", base_model="m",
        sampling={"temperature": 1.0}, created_at=2.0)
    body = {"schema_version": 1, "type": "generation", **generation.__dict__}
    assert generation.to_json() == json.dumps(body, separators=(",", ":"),
                                              ensure_ascii=False).encode()


class _SilentFuture:
    """kafka-python's future of a record the broker never acknowledges."""

    def add_callback(self, *_args: object) -> None:
        pass

    def add_errback(self, *_args: object) -> None:
        pass


class _Metadata:
    def partitions_for_topic(self, _topic: str) -> set[int]:
        return {0}


class _SilentProducer:
    _metadata = _Metadata()

    def send(self, *_args: object, **_kwargs: object) -> _SilentFuture:
        return _SilentFuture()


def test_an_ack_that_never_comes_is_unavailable_and_leaves_no_timer() -> None:
    seen: list[bool] = []
    producer = DurableProducer(KafkaConfig(produce_timeout_s=0.2),
                               lambda _topic, _s, ok: seen.append(ok))
    producer._producer = _SilentProducer()  # type: ignore[assignment]

    async def main() -> int:
        loop = asyncio.get_running_loop()
        with pytest.raises(Unavailable, match=r"within 0\.2s"):
            await producer.send("feedback", "u", b"{}")
        waiting = asyncio.create_task(producer.send("feedback", "u", b"{}"))
        await asyncio.sleep(0.05)
        waiting.cancel()  # a caller that gives up takes its timer with it
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return sum(not h.cancelled() for h in loop._scheduled)  # type: ignore[attr-defined]

    assert asyncio.run(main()) == 0
    assert seen == [False, False]
