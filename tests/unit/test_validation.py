from __future__ import annotations

import pytest

from services.contract.errors import InvalidArgument
from services.contract.ids import validate_user_id, validate_version
from services.server.config import GenerationLimits
from services.server.validation import Message, validate_feedback, validate_generate

LIMITS = GenerationLimits(default_max_tokens=32, max_tokens_limit=64, max_candidates=4)
HI = [Message("user", "hi")]


def gen(**kw):  # type: ignore[no-untyped-def]
    args = {"user_id": "alice", "messages": HI, "num_candidates": 0, "max_tokens": 0,
            "temperature": None, "top_p": None, "seed": None, "limits": LIMITS}
    args.update(kw)
    return validate_generate(**args)


def test_defaults_fill_unset_fields() -> None:
    p = gen()
    assert (p.num_candidates, p.max_tokens, p.temperature, p.top_p, p.seed) == (1, 32, 0.7, 1.0,
                                                                                 None)


@pytest.mark.parametrize("user_id", ["a", "Alice_01", "x.y-z", "9" * 64])
def test_good_user_ids(user_id: str) -> None:
    assert validate_user_id(user_id) == user_id


@pytest.mark.parametrize("user_id", ["", ".", "..", "../x", "a/b", "a\\b", "-a", ".hidden",
                                     "a" * 65, "a b", "ü", "a\x00", "a@v1"])
def test_bad_user_ids(user_id: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_user_id(user_id)


@pytest.mark.parametrize(("kw", "text"), [
    ({"messages": []}, "messages is empty"),
    ({"messages": [Message("bot", "x")]}, "role 'bot' is unknown"),
    ({"messages": [Message("assistant", "x")]}, "must not be from the assistant"),
    ({"messages": [Message("user", "x" * 20000)]}, "longer than"),
    ({"num_candidates": 5}, "num_candidates"),
    ({"max_tokens": 65}, "max_tokens"),
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"temperature": 2.5}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
])
def test_bad_generate(kw, text: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument, match=text):
        gen(**kw)


def test_feedback_shapes() -> None:
    p = validate_feedback("alice", "", "", "thumbs", ["r"], True)
    assert p.labeler_id == "alice" and p.up is True
    with pytest.raises(InvalidArgument, match="either thumbs or ranking"):
        validate_feedback("alice", "", "", None, [], None)
    with pytest.raises(InvalidArgument, match="at least 2"):
        validate_feedback("alice", "", "", "ranking", ["a"], None)
    with pytest.raises(InvalidArgument, match="twice"):
        validate_feedback("alice", "", "", "ranking", ["a", "a"], None)
    with pytest.raises(InvalidArgument, match="more than"):
        validate_feedback("alice", "", "", "ranking", [str(i) for i in range(17)], None)
    with pytest.raises(InvalidArgument, match="labeler_id"):
        validate_feedback("alice", "../bob", "", "thumbs", ["r"], True)
    with pytest.raises(InvalidArgument, match="feedback_id"):
        validate_feedback("alice", "", "x" * 200, "thumbs", ["r"], True)


def test_versions() -> None:
    assert validate_version("v12") == "v12"
    for bad in ("", "12", "v", "v1/..", "V1", "v-1"):
        with pytest.raises(InvalidArgument):
            validate_version(bad)
