"""Property-based fuzzing of the HTTP API's JSON endpoints (hypothesis, as for gRPC in
tests/hardening/test_fuzz.py) on the auth-on server: random and malformed bodies,
fields and credentials get a documented 2xx/4xx, never a 5xx, and the server stays
healthy. PERSONALIZE_FUZZ_EXAMPLES scales it (here a tenth of it each, default 70 +
70 + 70 examples: about 210 calls)."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.http.conftest import Tokens

EXAMPLES = max(10, int(os.environ.get("PERSONALIZE_FUZZ_EXAMPLES", "700")) // 10)
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
DOCUMENTED = {200, 400, 401, 403, 404, 413, 429}
USERS = ["hz-alice", "hz-bob"]
NON_JSON = [b'{"model": "tiny-llama", "messages": [], "temperature": NaN}',
            b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "\\ud800"}]}',
            b'{"thumbs": {"response_id": "r1.a.b", "up": Infinity}}', b"\xef\xbb\xbf{}"]
CODES: Counter[tuple[str, int]] = Counter()

text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                         st.floats(allow_nan=False, allow_infinity=False), text)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)), max_leaves=12)


def mostly(valid: st.SearchStrategy[Any], wild: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` seven times in eight, else ``wild``: enough well-formed calls get past
    validation to the engine and Kafka."""
    return st.integers(0, 7).flatmap(lambda i: wild if i == 0 else valid)


messages = st.lists(st.fixed_dictionaries({
    "role": mostly(st.just("user"), st.one_of(st.sampled_from(
        ["system", "assistant", "developer", "tool", ""]), json_values)),
    "content": mostly(text, st.one_of(json_values, st.lists(st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "image_url"]), "text": text}), max_size=2))),
}), min_size=0, max_size=3)
chat_bodies = st.fixed_dictionaries({
    "model": mostly(st.just("tiny-llama"), st.one_of(st.just("tiny-llama:base"), json_values)),
    "messages": mostly(messages, json_values),
}, optional={
    "stream": mostly(st.booleans(), json_values),
    "n": mostly(st.integers(1, 3), json_values),
    "max_tokens": mostly(st.integers(1, 4), st.one_of(st.integers(-5, 10**12), json_values)),
    "temperature": mostly(st.floats(0, 2), json_values),
    "top_p": st.one_of(st.floats(0, 1.5), json_values),
    "seed": st.one_of(st.integers(-2**64, 2**64), json_values),
    "stop": st.one_of(st.none(), text, json_values),
    "user": mostly(st.sampled_from(USERS), json_values),
    "stream_options": st.one_of(st.just({"include_usage": True}), json_values),
})


@st.composite
def credentials(draw: st.DrawFn, tokens: Tokens) -> dict[str, str]:
    kind = draw(st.sampled_from(["alice", "alice", "bob", "admin", "none", "garbage"]))
    if kind == "none":
        return {}
    if kind == "garbage":
        scheme = draw(st.sampled_from(["Bearer ", "bearer ", "Basic ", ""]))
        token = draw(st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1,
                             max_size=60))
        return {"Authorization": scheme + token}
    return tokens.headers("ops" if kind == "admin" else f"hz-{kind}", admin=kind == "admin")


@pytest.fixture(scope="module")
def http(secure_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=secure_url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def response_ids(http: httpx.Client, tokens: Tokens) -> list[str]:
    ids = []
    for user in USERS:
        r = http.post("/v1/chat/completions", headers=tokens.headers(user), json={
            "model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "n": 2})
        ids += [c["response_id"] for c in r.json()["choices"]]
    return ids


def check(name: str, r: httpx.Response) -> None:
    CODES[(name, r.status_code)] += 1
    assert r.status_code in DOCUMENTED, (r.status_code, r.text[:500])
    if r.status_code != 200:
        err = r.json()["error"]
        assert err["message"] and err["type"], err
    elif r.headers["content-type"].startswith("text/event-stream"):
        assert "data: [DONE]" in r.text or '"error"' in r.text, r.text[-300:]


def test_fuzz_chat_completions(http: httpx.Client, tokens: Tokens) -> None:
    @FUZZ
    @given(body=chat_bodies, headers=credentials(tokens))
    def run(body: dict[str, Any], headers: dict[str, str]) -> None:
        check("chat", http.post("/v1/chat/completions", json=body, headers=headers))
    run()


def test_fuzz_feedback(http: httpx.Client, tokens: Tokens, response_ids: list[str]) -> None:
    rid = mostly(st.sampled_from(response_ids), text)
    bodies = st.fixed_dictionaries({}, optional={
        "user": mostly(st.sampled_from(USERS), json_values),
        "labeler_id": st.one_of(st.sampled_from(USERS), json_values),
        "feedback_id": st.one_of(text, json_values),
        "thumbs": mostly(st.fixed_dictionaries({"response_id": rid, "up": st.booleans()}),
                         json_values),
        "ranking": mostly(st.fixed_dictionaries({"response_ids": st.lists(rid, max_size=5)}),
                          json_values),
        "score": mostly(st.fixed_dictionaries({"id": rid, "name": text, "value": st.one_of(
            st.booleans(), st.sampled_from([1, 0, -1, 0.5, 2]))}), json_values),
    })

    @FUZZ
    @given(body=bodies, headers=credentials(tokens))
    def run(body: dict[str, Any], headers: dict[str, str]) -> None:
        check("feedback", http.post("/v1/feedback", json=body, headers=headers))
    run()


def test_fuzz_raw_bodies_and_queries(http: httpx.Client, tokens: Tokens) -> None:
    @FUZZ
    @given(raw=st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()),
                         st.sampled_from(NON_JSON)),
           path=st.sampled_from(["/v1/chat/completions", "/v1/feedback"]),
           user=st.one_of(st.sampled_from(USERS), text), headers=credentials(tokens))
    def run(raw: bytes, path: str, user: str, headers: dict[str, str]) -> None:
        check("raw", http.post(path, content=raw, headers=headers))
        check("status", http.get("/v1/status", params={"user": user}, headers=headers))
    run()


def test_server_healthy_after_fuzzing(http: httpx.Client, secure_http, tokens: Tokens) -> None:  # type: ignore[no-untyped-def]
    print(f"fuzzed HTTP calls by status: {sorted(CODES.items())}")
    assert http.get("/health").status_code == 200 and http.get("/ready").status_code == 200
    r = http.post("/v1/chat/completions", headers=tokens.headers(USERS[0]), json={
        "model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
        "temperature": 0})  # greedy: a sampled end-of-sequence token cannot end it early
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
    sample = secure_http.metrics.registry.get_sample_value
    for method in ("Generate", "SubmitFeedback", "GetUserStatus"):
        assert not sample("personalize_server_requests_total",
                          {"method": method, "code": "INTERNAL", "api": "http"}), method
    assert secure_http.core.generation.running == 0 and secure_http.http.in_flight == 0
