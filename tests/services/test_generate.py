"""Generate on the real vLLM engine (tiny model), server in-process."""

from __future__ import annotations

import grpc
import pytest

from personalize.v1 import assistant_pb2 as pb
from tests.services.helpers import chat_request, generate


def test_streams_pieces_and_finishes(stub, user_id: str) -> None:
    out = generate(stub, user_id, max_tokens=12, temperature=0.0)
    assert set(out.finished) == {0}
    final = out.finished[0]
    assert final.completion_tokens == 12 and final.finish_reason == "length"
    assert out.messages > 2, "tokens must stream as separate messages"
    assert out.texts[0]
    assert out.versions == {""}, "a user without an adapter is served the base model"
    assert out.response_ids[0].startswith("r1.")


def test_greedy_is_deterministic(stub, user_id: str) -> None:
    a = generate(stub, user_id, "what is up", max_tokens=10, temperature=0.0)
    b = generate(stub, user_id, "what is up", max_tokens=10, temperature=0.0)
    assert a.texts[0] == b.texts[0]
    assert a.response_ids[0] != b.response_ids[0]


def test_num_candidates_returns_distinct_candidates(stub, user_id: str) -> None:
    out = generate(stub, user_id, num_candidates=3, max_tokens=10, temperature=1.0, seed=7)
    assert set(out.finished) == {0, 1, 2}
    assert len(set(out.response_ids.values())) == 3
    assert len(set(out.texts.values())) > 1, "sampled candidates with distinct seeds differ"


@pytest.mark.parametrize(
    ("request_kwargs", "message"),
    [
        ({"messages": []}, "messages is empty"),
        ({"messages": [pb.ChatMessage(role="robot", content="hi")]}, "role 'robot' is unknown"),
        ({"max_tokens": 100000}, "max_tokens must be in"),
        ({"temperature": -0.5}, "temperature must be in"),
        ({"top_p": 0.0}, "top_p must be in"),
        ({"num_candidates": 99}, "num_candidates must be in"),
        ({"user_id": "../etc/passwd"}, "user_id '../etc/passwd' is invalid"),
        ({"user_id": ""}, "user_id is required"),
        ({"messages": [pb.ChatMessage(role="user", content="word " * 600)]},
         "exceeds the context of 512 tokens"),
    ],
)
def test_bad_input_is_invalid_argument(stub, user_id: str, request_kwargs, message) -> None:  # type: ignore[no-untyped-def]
    base = chat_request(user_id)
    request = pb.GenerateRequest()
    request.CopyFrom(base)
    for key, value in request_kwargs.items():
        if key == "messages":
            del request.messages[:]
            request.messages.extend(value)
        else:
            setattr(request, key, value)
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Generate(request, timeout=30))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()
