"""The SDK over several server replicas: calls go round robin, one call stays on one
replica, and a feedback retry after UNAVAILABLE goes to the next replica. Two
in-process gRPC servers with a fake servicer; no engine."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from personalize.v1 import assistant_pb2 as pb
from personalize.v1 import assistant_pb2_grpc as pb_grpc
from services.client.sdk import AssistantClient, parse_targets


class Replica(pb_grpc.AssistantServicer):
    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[str] = []
        self.unavailable = False

    def Generate(self, request: pb.GenerateRequest, context: grpc.ServicerContext
                 ) -> Iterator[pb.GenerateResponse]:
        self.calls.append("Generate")
        for i in range(2):
            yield pb.GenerateResponse(response_id=f"{self.name}-r", candidate_index=0,
                                      text=f"{self.name}{i}", finished=i == 1)

    def SubmitFeedback(self, request: pb.FeedbackRequest, context: grpc.ServicerContext
                       ) -> pb.FeedbackAck:
        self.calls.append("SubmitFeedback")
        if self.unavailable:
            context.abort(grpc.StatusCode.UNAVAILABLE, "broker down")
        return pb.FeedbackAck(feedback_id=request.feedback_id)

    def GetUserStatus(self, request: pb.UserStatusRequest, context: grpc.ServicerContext
                      ) -> pb.UserStatus:
        self.calls.append("GetUserStatus")
        return pb.UserStatus(user_id=request.user_id, adapter_version=self.name)


@pytest.fixture
def replicas() -> Iterator[tuple[list[Replica], str]]:
    servers, found, targets = [], [], []
    for name in ("a", "b"):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        replica = Replica(name)
        pb_grpc.add_AssistantServicer_to_server(replica, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        found.append(replica)
        targets.append(f"127.0.0.1:{port}")
    yield found, ", ".join(targets)
    for server in servers:
        server.stop(None)


def test_parse_targets() -> None:
    assert parse_targets("h:1") == ["h:1"]
    assert parse_targets(" h:1, h:2 ,") == ["h:1", "h:2"]
    assert parse_targets(["h:1", "h:2"]) == ["h:1", "h:2"]
    with pytest.raises(ValueError):
        parse_targets(" , ")


def test_calls_are_spread_round_robin(replicas: tuple[list[Replica], str]) -> None:
    (a, b), targets = replicas
    with AssistantClient(targets, timeout_s=10) as client:
        assert len(client.targets) == 2
        served = [client.status("u").adapter_version for _ in range(4)]
        assert served == ["a", "b", "a", "b"]
        [first] = client.complete("u", "hi")
        [second] = client.complete("u", "hi")
        assert (first.text, second.text) == ("a0a1", "b0b1"), "a stream stays on one replica"
        client.thumbs("u", first.response_id, True)  # feedback on another replica's answer
        assert a.calls == ["GetUserStatus", "GetUserStatus", "Generate", "SubmitFeedback"]
        assert b.calls == ["GetUserStatus", "GetUserStatus", "Generate"]


def test_feedback_retry_goes_to_the_next_replica(replicas: tuple[list[Replica], str]) -> None:
    (a, b), targets = replicas
    a.unavailable = True
    with AssistantClient(targets, timeout_s=10, feedback_retries=1) as client:
        ack = client.thumbs("u", "r", True, feedback_id="f1")
    assert ack.feedback_id == "f1"
    assert a.calls == ["SubmitFeedback"] and b.calls == ["SubmitFeedback"]
