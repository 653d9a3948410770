"""Property-based fuzzing of every RPC (hypothesis) against the in-process server
with auth on: random and malformed fields, credentials and raw bytes. Every
call ends with a documented status code (the one the auth rules predict when
they decide), and the server stays healthy.

PERSONALIZE_FUZZ_EXAMPLES sets the examples per test (default 700: about 2,400
calls in all); raise it for a longer run.
"""

from __future__ import annotations

import os
import time
from typing import Any

import grpc
import jwt
import pytest
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from personalize.v1 import assistant_pb2 as pb
from tests.hardening.conftest import AUTH, SECRET, Metadata, Tokens, bearer
from tests.services.helpers import generate

EXAMPLES = int(os.environ.get("PERSONALIZE_FUZZ_EXAMPLES", "700"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
USERS = ["fz-alice", "fz-bob"]
C = grpc.StatusCode
DOCUMENTED = {C.OK, C.INVALID_ARGUMENT, C.PERMISSION_DENIED, C.UNAUTHENTICATED}
SERVICE = "/personalize.v1.Assistant/"
TOTAL: dict[str, int] = {}
CODES: dict[tuple[str, str], int] = {}

text = st.text(st.characters(exclude_categories=("Cs",)), max_size=80)
ascii_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80)
wild_user_ids = st.one_of(text, st.sampled_from(USERS),
                          st.sampled_from(["", "../" + USERS[0], "a/b", "x" * 65, ".", "a\x00"]))
KINDS = ["user", "user", "user", "admin", "admin",
         "none", "garbage", "expired", "wrong_key", "random"]


def mostly(valid: st.SearchStrategy[Any], wild: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` about three times in four, else ``wild``: enough well-formed calls
    get past validation to the engine and Kafka."""
    return st.integers(0, 3).flatmap(lambda i: wild if i == 0 else valid)


@st.composite
def callers(draw: st.DrawFn) -> tuple[tuple[str, str], str]:
    """((kind, subject), user_id): mostly a caller acting for its own user."""
    kind = draw(st.sampled_from(KINDS))
    subject = {"user": draw(st.sampled_from(USERS)), "admin": "fz-ops",
               "random": draw(ascii_text)}.get(kind, "")
    own = subject if kind == "user" else draw(st.sampled_from(USERS))
    return (kind, subject), draw(mostly(st.just(own), wild_user_ids))


class Credentials:
    """Metadata for each kind of caller, made once."""

    def __init__(self, tokens: Tokens) -> None:
        now = int(time.time())
        expired = {"sub": USERS[0], "iss": AUTH.issuer, "aud": AUTH.audience,
                   "iat": now - 7200, "exp": now - 3600}
        self._fixed: dict[str, Metadata | None] = {
            "none": None, "garbage": bearer("x.y.z"),
            "expired": bearer(jwt.encode(expired, SECRET, algorithm="HS256")),
            "wrong_key": bearer(jwt.encode({**expired, "exp": now + 3600}, "w" * 40,
                                           algorithm="HS256")),
            "admin": tokens("fz-ops", admin=True)}
        self._users = {u: tokens(u) for u in USERS}

    def __call__(self, caller: tuple[str, str]) -> Metadata | None:
        kind, subject = caller
        if kind == "user":
            return self._users[subject]
        if kind == "random":
            return (("authorization", subject),)
        return self._fixed[kind]


def predicted(caller: tuple[str, str], user_id: str, labeler_id: str = "",
              rates_responses: bool = False) -> set[C]:
    """The codes the auth rules leave for this caller and request. Past them only
    a response id of another user is PERMISSION_DENIED."""
    kind, subject = caller
    if kind in ("none", "garbage", "expired", "wrong_key", "random"):
        return {C.UNAUTHENTICATED}
    if kind == "user" and (user_id != subject or labeler_id not in ("", subject)):
        return {C.PERMISSION_DENIED}
    return {C.OK, C.INVALID_ARGUMENT} | ({C.PERMISSION_DENIED} if rates_responses else set())


def outcome(name: str, call: Any) -> tuple[C, Any]:
    TOTAL[name] = TOTAL.get(name, 0) + 1
    try:
        code, result = C.OK, call()
    except grpc.RpcError as exc:
        assert exc.code() in DOCUMENTED, (exc.code(), exc.details())
        assert exc.details(), "every error says what is wrong"
        code, result = exc.code(), exc.details()
    CODES[(name, code.name)] = CODES.get((name, code.name), 0) + 1
    return code, result


@pytest.fixture(scope="module")
def creds(tokens: Tokens) -> Credentials:
    return Credentials(tokens)


@pytest.fixture(scope="module")
def response_ids(secure_stub, tokens: Tokens) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    """Real response ids of both fuzz users (three candidates of one call each)."""
    return {u: list(generate(secure_stub, u, metadata=tokens(u), num_candidates=3,
                             max_tokens=1).response_ids.values()) for u in USERS}


wild_floats = st.floats(width=32, allow_nan=True, allow_infinity=True)
wild_messages = st.one_of(
    st.lists(st.builds(pb.ChatMessage,
                       role=st.one_of(st.sampled_from(["system", "user", "assistant"]), text),
                       content=st.one_of(text, st.just("x" * 16001),
                                         st.just("hello " * 600))), max_size=4),
    st.just([pb.ChatMessage(role="user", content="hi")] * 65))
messages = mostly(st.lists(st.builds(pb.ChatMessage, role=st.sampled_from(["system", "user"]),
                                     content=st.text(max_size=40)), min_size=1, max_size=3),
                  wild_messages)
generate_fields = st.fixed_dictionaries({
    "messages": messages,
    "num_candidates": mostly(st.integers(0, 4), st.integers(0, 2**32 - 1)),
    "max_tokens": mostly(st.integers(0, 8), st.integers(0, 2**32 - 1)),
    "temperature": mostly(st.one_of(st.none(), st.floats(0, 2, width=32)), wild_floats),
    "top_p": mostly(st.one_of(st.none(), st.floats(0.0625, 1, width=32)), wild_floats),
    "seed": st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
    "base_model": st.booleans()})


@FUZZ
@given(who=callers(), fields=generate_fields)
def test_fuzz_generate(secure_stub, creds: Credentials, who: tuple[tuple[str, str], str],  # type: ignore[no-untyped-def]
                       fields: dict[str, Any]) -> None:
    caller, user_id = who
    request = pb.GenerateRequest(user_id=user_id, **fields)
    md = creds(caller)
    # a generous deadline: a valid request may ask for up to 4 x 1024 tokens, and the
    # client's own deadline expiring on a loaded host says nothing about the server
    code, result = outcome("Generate", lambda: list(secure_stub.Generate(request, metadata=md,
                                                                         timeout=180)))
    assert code in predicted(caller, request.user_id), (code, result)
    if code == C.OK:
        finished = [m for m in result if m.finished]
        assert len(finished) == (request.num_candidates or 1)
        assert all(0 < m.completion_tokens <= 8 for m in finished)


def mutated(rid: str, at: int) -> str:
    """The id with one character changed."""
    i = at % len(rid)
    return rid[:i] + ("A" if rid[i] != "A" else "B") + rid[i + 1:]


@st.composite
def feedback_requests(draw: st.DrawFn, user_id: str,
                      pool: dict[str, list[str]]) -> pb.FeedbackRequest:
    """Mostly well-formed feedback on the user's own responses; else anything."""
    own = pool.get(user_id) or pool[USERS[0]]
    every = [rid for ids in pool.values() for rid in ids]
    rid = mostly(st.sampled_from(own), st.one_of(
        st.sampled_from(every), text,
        st.builds(mutated, st.sampled_from(every), st.integers(0, 200))))
    request = pb.FeedbackRequest(
        user_id=user_id,
        labeler_id=draw(mostly(st.sampled_from(["", user_id]), st.one_of(
            st.sampled_from(USERS), text))),
        feedback_id=draw(mostly(st.text("abc123-", max_size=20), st.one_of(
            text, st.text("ab:-.", min_size=129, max_size=140)))))
    kind = draw(st.sampled_from(["thumbs", "ranking", "none"]))
    if kind == "thumbs":
        request.thumbs.CopyFrom(pb.Thumbs(response_id=draw(rid), up=draw(st.booleans())))
    elif kind == "ranking":
        ranking = mostly(st.permutations(own).map(lambda ids: ids[:3]),
                         st.lists(rid, max_size=18))
        request.ranking.CopyFrom(pb.Ranking(response_ids=draw(ranking)))
    return request


@FUZZ
@given(data=st.data(), who=callers())
def test_fuzz_submit_feedback(secure_stub, creds: Credentials,  # type: ignore[no-untyped-def]
                              response_ids: dict[str, list[str]], data: st.DataObject,
                              who: tuple[tuple[str, str], str]) -> None:
    caller, user_id = who
    request = data.draw(feedback_requests(user_id, response_ids))
    md = creds(caller)
    code, result = outcome("SubmitFeedback", lambda: secure_stub.SubmitFeedback(
        request, metadata=md, timeout=30))
    assert code in predicted(caller, request.user_id, request.labeler_id,
                             rates_responses=True), (code, result)
    if code == C.OK:
        assert result.feedback_id and result.offset >= 0
        assert not request.feedback_id or result.feedback_id == request.feedback_id


@FUZZ
@given(who=callers())
def test_fuzz_get_user_status(secure_stub, creds: Credentials,  # type: ignore[no-untyped-def]
                              who: tuple[tuple[str, str], str]) -> None:
    caller, user_id = who
    code, result = outcome("GetUserStatus", lambda: secure_stub.GetUserStatus(
        pb.UserStatusRequest(user_id=user_id), metadata=creds(caller), timeout=30))
    assert code in predicted(caller, user_id), (code, result)
    if code == C.OK:
        assert result.user_id == user_id


REQUEST_TYPES = {"Generate": pb.GenerateRequest, "SubmitFeedback": pb.FeedbackRequest,
                 "GetUserStatus": pb.UserStatusRequest}


@settings(FUZZ, max_examples=max(1, EXAMPLES // 2))
@given(method=st.sampled_from(sorted(REQUEST_TYPES)),
       body=st.one_of(st.binary(max_size=120),
                      st.builds(lambda raw, tail: raw + tail,
                                st.just(pb.UserStatusRequest(user_id=USERS[0])
                                        .SerializeToString()), st.binary(max_size=20))))
def test_fuzz_raw_bytes(secure_channel, creds: Credentials, method: str, body: bytes) -> None:  # type: ignore[no-untyped-def]
    md = creds(("admin", "fz-ops"))
    if method == "Generate":
        call = secure_channel.unary_stream(SERVICE + method)
        code, result = outcome("raw bytes", lambda: list(call(body, metadata=md, timeout=30)))
    else:
        call = secure_channel.unary_unary(SERVICE + method)
        code, result = outcome("raw bytes", lambda: call(body, metadata=md, timeout=30))
    try:
        REQUEST_TYPES[method].FromString(body)
    except DecodeError:
        assert code == C.INVALID_ARGUMENT and "not a valid protobuf message" in result, result
        return
    assert code in {C.OK, C.INVALID_ARGUMENT, C.PERMISSION_DENIED}, (code, result)


def test_server_healthy_after_fuzzing(secure_server, secure_channel, secure_stub,  # type: ignore[no-untyped-def]
                                      tokens: Tokens) -> None:
    print(f"fuzzed calls: {TOTAL} ({sum(TOTAL.values())} in all); codes: {sorted(CODES.items())}")
    if len(TOTAL) == 4:  # the whole module ran
        assert sum(TOTAL.values()) >= min(2000, 3 * EXAMPLES), TOTAL
    reply = health_pb2_grpc.HealthStub(secure_channel).Check(
        health_pb2.HealthCheckRequest(service="personalize.v1.Assistant"), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    out = generate(secure_stub, USERS[0], metadata=tokens(USERS[0]), max_tokens=4,
                   temperature=0.0)
    assert out.finished[0].completion_tokens == 4
    for method in REQUEST_TYPES:
        for code in ("INTERNAL", "UNKNOWN"):
            assert secure_server.metrics.requests.labels(method, code, "grpc")._value.get() == 0, \
                f"{method} answered {code}"
    assert secure_server.core.generation.running == 0
