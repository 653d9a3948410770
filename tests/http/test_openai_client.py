"""The HTTP API driven by the official ``openai`` package (and httpx for feedback)
against the session's in-process server: the real tiny engine and the real broker.
Then GetUserStatus over gRPC sees the feedback given over HTTP."""

from __future__ import annotations

from collections import defaultdict

import httpx
import pytest
from openai import OpenAI

from personalize.v1 import assistant_pb2 as pb
from tests.support.topics import read_topic

MODEL = "tiny-llama"
HELLO = [{"role": "user", "content": "tell me about the sea"}]


@pytest.fixture(scope="module")
def client(http_url: str) -> OpenAI:
    # auth is off on the session server: the api key is not checked, `user` names the user
    return OpenAI(base_url=f"{http_url}/v1", api_key="unused", max_retries=0, timeout=60)


def extra(choice, name: str) -> str:  # type: ignore[no-untyped-def]
    """An extra field the stock client keeps on its objects."""
    return (choice.model_extra or {})[name]


def feedback(http_url: str, body: dict, **kw) -> httpx.Response:  # type: ignore[no-untyped-def, type-arg]
    return httpx.post(f"{http_url}/v1/feedback", json=body, timeout=30, **kw)


def test_models(client: OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == [MODEL, f"{MODEL}:base"]
    assert client.models.retrieve(f"{MODEL}:base").id == f"{MODEL}:base"


def test_non_streaming_n3_then_ranking_and_score(client: OpenAI, http_url: str, stub, broker,  # type: ignore[no-untyped-def]
                                                  user_id: str) -> None:
    out = client.chat.completions.create(model=MODEL, messages=HELLO, n=3, max_tokens=8,
                                         user=user_id, seed=7)
    assert out.object == "chat.completion" and out.model == MODEL
    assert [c.index for c in out.choices] == [0, 1, 2]
    ids = [extra(c, "response_id") for c in out.choices]
    assert len(set(ids)) == 3 and all(i.startswith("r1.") for i in ids)
    assert out.id == ids[0], "the completion's id is its first choice's response id"
    assert all(c.message.role == "assistant" and c.finish_reason in ("stop", "length")
               for c in out.choices)
    assert out.usage.completion_tokens <= 3 * 8 and out.usage.prompt_tokens > 0
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    assert out.system_fingerprint == "base"  # no adapter trained for this user yet

    ranked = feedback(http_url, {"user": user_id, "ranking": {"response_ids": [ids[2], ids[0],
                                                                               ids[1]]},
                                 "labeler_id": user_id}, headers={"Idempotency-Key": "k-rank-1"})
    assert ranked.status_code == 200, ranked.text
    ack = ranked.json()
    assert ack["feedback_id"] == "k-rank-1" and ack["offset"] >= 0
    scored = feedback(http_url, {"user": user_id,
                                 "score": {"name": "helpful", "value": 0, "id": out.id}})
    assert scored.status_code == 200, scored.text

    status = stub.GetUserStatus(pb.UserStatusRequest(user_id=user_id), timeout=10)
    assert status.feedback_accepted == 2 and status.generations_served == 3
    over_http = httpx.get(f"{http_url}/v1/status", params={"user": user_id}, timeout=10).json()
    assert over_http["feedback_accepted"] == 2 and over_http["user_id"] == user_id

    fbs = read_topic(broker.bootstrap, "feedback",
                     lambda rs: sum(r["key"] == user_id for r in rs) >= 2)
    mine = {r["value"]["feedback_id"]: r["value"] for r in fbs if r["key"] == user_id}
    assert mine["k-rank-1"]["kind"] == "ranking"
    assert mine["k-rank-1"]["response_ids"] == [ids[2], ids[0], ids[1]]
    thumbs = next(v for v in mine.values() if v["kind"] == "thumbs")
    assert thumbs["up"] is False and thumbs["response_ids"] == [ids[0]]


def test_streaming_with_usage_then_thumbs(client: OpenAI, http_url: str, stub,  # type: ignore[no-untyped-def]
                                          user_id: str) -> None:
    stream = client.chat.completions.create(model=MODEL, messages=HELLO, n=2, max_tokens=6,
                                            user=user_id, stream=True, temperature=0.0,
                                            stream_options={"include_usage": True})
    texts: dict[int, str] = defaultdict(str)
    ids: dict[int, str] = {}
    finish: dict[int, str] = {}
    chunks = list(stream)
    for chunk in chunks[:-1]:
        assert chunk.object == "chat.completion.chunk" and chunk.usage is None
        (choice,) = chunk.choices
        assert chunk.id == extra(choice, "response_id")
        ids.setdefault(choice.index, chunk.id)
        assert ids[choice.index] == chunk.id
        texts[choice.index] += choice.delta.content or ""
        if choice.finish_reason:
            finish[choice.index] = choice.finish_reason
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == 12
    assert sorted(finish) == [0, 1] and set(finish.values()) == {"length"}
    assert texts[0] == texts[1], "greedy candidates agree"

    resp = feedback(http_url, {"user": user_id, "thumbs": {"response_id": ids[1], "up": True}})
    assert resp.status_code == 200, resp.text
    status = stub.GetUserStatus(pb.UserStatusRequest(user_id=user_id), timeout=10)
    assert status.feedback_accepted == 1


def test_sse_ends_with_done(http_url: str, user_id: str) -> None:
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 4, "stream": True, "user": user_id}
    with httpx.stream("POST", f"{http_url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        data = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]" and len(data) >= 3


def test_base_model_by_suffix(client: OpenAI, user_id: str) -> None:
    out = client.chat.completions.create(model=f"{MODEL}:base", messages=HELLO, max_tokens=4,
                                         user=user_id)
    assert out.model == f"{MODEL}:base" and out.system_fingerprint == "base"
    assert extra(out.choices[0], "adapter_version") == ""
