"""Small helpers shared by the server tests."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

from personalize.v1 import assistant_pb2 as pb


@dataclass
class Collected:
    texts: dict[int, str] = field(default_factory=lambda: defaultdict(str))
    response_ids: dict[int, str] = field(default_factory=dict)
    finished: dict[int, pb.GenerateResponse] = field(default_factory=dict)
    versions: set[str] = field(default_factory=set)
    messages: int = 0


def chat_request(user_id: str, text: str = "hello", **kwargs) -> pb.GenerateRequest:  # type: ignore[no-untyped-def]
    return pb.GenerateRequest(user_id=user_id,
                              messages=[pb.ChatMessage(role="user", content=text)], **kwargs)


def collect(stream) -> Collected:  # type: ignore[no-untyped-def]
    out = Collected()
    for msg in stream:
        out.messages += 1
        out.texts[msg.candidate_index] += msg.text
        out.response_ids.setdefault(msg.candidate_index, msg.response_id)
        assert out.response_ids[msg.candidate_index] == msg.response_id
        out.versions.add(msg.adapter_version)
        if msg.finished:
            out.finished[msg.candidate_index] = msg
    return out


def generate(stub, user_id: str, text: str = "hello", metadata=None, **kwargs) -> Collected:  # type: ignore[no-untyped-def]
    return collect(stub.Generate(chat_request(user_id, text, **kwargs), timeout=120,
                                 metadata=metadata))


PROMPT = "tell me about the sea"


def greedy(stub, user: str, tokens: int = 24) -> Collected:  # type: ignore[no-untyped-def]
    return generate(stub, user, PROMPT, max_tokens=tokens, temperature=0.0)


def wait_for_version(stub, user: str, version: str, timeout_s: float = 30.0) -> Collected:  # type: ignore[no-untyped-def]
    """Greedy answers for ``user`` until one comes from ``version``; that answer."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = greedy(stub, user)
        if out.finished[0].adapter_version == version:
            return out
        time.sleep(0.1)
    raise AssertionError(f"{user} never served {version}")
