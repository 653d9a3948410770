"""Health, reflection, metrics scrape, cancellation and a broker outage."""

from __future__ import annotations

import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from personalize.v1 import assistant_pb2 as pb
from personalize.v1 import assistant_pb2_grpc
from tests.conftest import make_server_config
from tests.services.helpers import chat_request, generate


def test_health_and_reflection(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "personalize.v1.Assistant"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = refl.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert {"personalize.v1.Assistant", "grpc.health.v1.Health"} <= names


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def test_metrics_scrape(stub, server, user_id: str) -> None:  # type: ignore[no-untyped-def]
    generate(stub, user_id, max_tokens=6, temperature=0.0)
    with pytest.raises(grpc.RpcError):
        list(stub.Generate(chat_request(user_id, max_tokens=999999), timeout=10))
    text = _scrape(server.cfg.metrics_port)
    assert 'personalize_server_requests_total{api="grpc",code="OK",method="Generate"}' in text
    assert ('personalize_server_requests_total{api="grpc",code="INVALID_ARGUMENT",'
            'method="Generate"}') in text
    for name in ("time_to_first_token_seconds_count", "inter_token_latency_seconds_count",
                 "generated_tokens_total", "kafka_produce_duration_seconds_count",
                 "active_adapters", "running_streams"):
        assert f"personalize_server_{name}" in text, name
    assert user_id not in text and "user_id" not in text, "metrics must not carry user ids"


def test_cancel_aborts_engine_request(stub, server, user_id: str) -> None:  # type: ignore[no-untyped-def]
    call = stub.Generate(chat_request(user_id, max_tokens=400, temperature=0.0), timeout=60)
    next(call)
    call.cancel()
    deadline = time.monotonic() + 10
    while server.core.generation.running:
        assert time.monotonic() < deadline, "cancelled stream still running on the server"
        time.sleep(0.05)
    assert not server.engine._llm.output_processor.request_states


def test_broker_down_feedback_unavailable_generate_works(loop_thread, tiny_engine, engine_config,  # type: ignore[no-untyped-def]
                                                         tmp_path, user_id: str) -> None:
    from services.devstack.broker import free_port
    from services.server.main import AssistantServer

    dead = f"127.0.0.1:{free_port()}"
    cfg = make_server_config(tmp_path, dead, engine_config)
    srv = loop_thread.call(AssistantServer, cfg, tiny_engine)
    loop_thread.run(srv.start())
    try:
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            stub = assistant_pb2_grpc.AssistantStub(ch)
            out = generate(stub, user_id, max_tokens=6, temperature=0.0)
            assert out.finished[0].completion_tokens == 6
            for _ in range(2):
                start = time.monotonic()
                with pytest.raises(grpc.RpcError) as err:
                    stub.SubmitFeedback(pb.FeedbackRequest(
                        user_id=user_id, thumbs=pb.Thumbs(response_id=out.response_ids[0])),
                        timeout=30)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                assert time.monotonic() - start < cfg.kafka.produce_timeout_s + 3
                time.sleep(1.1)
            again = generate(stub, user_id, max_tokens=6, temperature=0.0)
            assert again.finished[0].completion_tokens == 6
    finally:
        loop_thread.run(srv.stop())
