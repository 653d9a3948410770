"""Overload and cancellation: bounded streams and calls (RESOURCE_EXHAUSTED past
them), client deadlines, and cancelled or vanished clients whose engine work is
aborted at once (nothing keeps running on the server or in the engine)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import grpc
import pytest

from personalize.v1 import assistant_pb2 as pb
from personalize.v1 import assistant_pb2_grpc
from tests.services.helpers import chat_request, generate
from tests.support.topics import isolated_kafka

LONG = 480  # tokens: runs for seconds on the tiny model (context 512)


@pytest.fixture(scope="module")
def kafka(broker):  # type: ignore[no-untyped-def]
    return isolated_kafka(broker.bootstrap, "overload")


def engine_requests(srv) -> int:  # type: ignore[no-untyped-def]
    return len(srv.engine._llm.output_processor.request_states)


def wait_idle(srv, timeout_s: float = 10.0) -> float:  # type: ignore[no-untyped-def]
    """Seconds until no stream runs on the server and the engine holds no request."""
    start = time.monotonic()
    while srv.core.generation.running or engine_requests(srv):
        assert time.monotonic() - start < timeout_s, (
            f"work leaked: {srv.core.generation.running} streams, "
            f"{engine_requests(srv)} engine requests")
        time.sleep(0.02)
    return time.monotonic() - start


def long_stream(stub, user: str, n: int = 1):  # type: ignore[no-untyped-def]
    """A started Generate call that would run for seconds."""
    call = stub.Generate(chat_request(user, max_tokens=LONG, temperature=0.0,
                                      num_candidates=n), timeout=60)
    next(call)
    return call


def test_stream_limit(servers, kafka, user_id: str) -> None:  # type: ignore[no-untyped-def]
    srv = servers.start(kafka, max_concurrent_streams=2)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            stub = assistant_pb2_grpc.AssistantStub(ch)
            held = [long_stream(stub, user_id), long_stream(stub, user_id)]
            assert srv.core.generation.running == 2
            with pytest.raises(grpc.RpcError) as err:
                generate(stub, user_id, max_tokens=2)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "limit of 2 streams" in err.value.details()
            # other calls are not streams: still served
            assert stub.GetUserStatus(pb.UserStatusRequest(user_id=user_id), timeout=10)
            for call in held:
                call.cancel()
            wait_idle(srv)
            assert generate(stub, user_id, max_tokens=2,
                            temperature=0.0).finished[0].completion_tokens == 2
            refused = srv.metrics.requests.labels("Generate", "RESOURCE_EXHAUSTED",
                                                 "grpc")._value.get()
            assert refused == 1
    finally:
        servers.stop(srv)


def test_call_limit(servers, kafka, user_id: str) -> None:  # type: ignore[no-untyped-def]
    srv = servers.start(kafka, max_concurrent_rpcs=2)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            stub = assistant_pb2_grpc.AssistantStub(ch)
            held = [long_stream(stub, user_id), long_stream(stub, user_id)]
            with pytest.raises(grpc.RpcError) as err:
                stub.GetUserStatus(pb.UserStatusRequest(user_id=user_id), timeout=10)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            for call in held:
                call.cancel()
            wait_idle(srv)
            assert stub.GetUserStatus(pb.UserStatusRequest(user_id=user_id), timeout=10)
    finally:
        servers.stop(srv)


def test_deadline_and_cancel_abort_engine_work(server, stub, user_id: str) -> None:  # type: ignore[no-untyped-def]
    # a client deadline ends the call and its engine requests
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Generate(chat_request(user_id, max_tokens=LONG, temperature=0.0,
                                        num_candidates=3), timeout=0.5))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 2.0
    wait_idle(server)
    # cancelling a stream of four candidates aborts all four
    call = long_stream(stub, user_id, n=4)
    assert engine_requests(server) == 4
    call.cancel()
    assert wait_idle(server) < 2.0


CLIENT = textwrap.dedent("""
    import sys
    import grpc
    from personalize.v1 import assistant_pb2 as pb, assistant_pb2_grpc
    stub = assistant_pb2_grpc.AssistantStub(grpc.insecure_channel(sys.argv[1]))
    call = stub.Generate(pb.GenerateRequest(user_id=sys.argv[2], max_tokens=int(sys.argv[3]),
        temperature=0.0, num_candidates=2,
        messages=[pb.ChatMessage(role="user", content="hello")]), timeout=120)
    next(call)
    print("streaming", flush=True)
    sys.stdin.read()  # until killed
""")


def test_vanished_client_aborts_engine_work(server, user_id: str) -> None:  # type: ignore[no-untyped-def]
    proc = subprocess.Popen([sys.executable, "-c", CLIENT, f"127.0.0.1:{server.port}", user_id,
                             str(LONG)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"streaming"
        assert server.core.generation.running == 1 and engine_requests(server) == 2
        proc.send_signal(signal.SIGKILL)  # no goodbye: the connection just drops
        proc.wait()
        assert wait_idle(server) < 5.0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
