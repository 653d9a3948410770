"""Bad requests get OpenAI-shaped 4xx errors with the right status, never a 5xx; the
limits are the gRPC ones; leaving a call stops its engine work; a broker outage is 503."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import make_server_config
from tests.http.conftest import Tokens

MODEL = "tiny-llama"
HELLO = [{"role": "user", "content": "hello"}]


def chat_body(user: str, **kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": HELLO, "max_tokens": 4, "user": user, **kw}


def post(url: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.post(f"{url}{path}", **{"timeout": 30, **kw})


def assert_error(r: httpx.Response, status: int, kind: str, words: str = "") -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert err["type"] == kind and err["message"], err
    assert words.lower() in err["message"].lower(), err
    return err  # type: ignore[no-any-return]


@pytest.mark.parametrize("change, words", [
    ({"messages": []}, "messages is empty"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "role"),
    ({"messages": [{"role": "assistant", "content": "x"}]}, "last message"),
    ({"messages": [{"content": "x"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages.0.content"),
    ({"max_tokens": 100000}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": 9999}, "max_tokens"),
    ({"n": 99}, "num_candidates"),
    ({"n": 0}, "n:"),
    ({"temperature": -1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"seed": 2**70}, "seed"),
    ({"stop": ["\n"]}, "stop sequences are not supported"),
    ({"tools": [{"type": "function"}]}, "tools"),
    ({"logprobs": True}, "logprobs"),
    ({"user": None}, "'user' is required"),
    ({"user": "../etc"}, "user_id"),
    ({"stream": "yes please"}, "stream"),
])
def test_bad_chat_requests_400(http_url: str, user_id: str, change: dict[str, Any],
                               words: str) -> None:
    body = {**chat_body(user_id), **change}
    assert_error(post(http_url, "/v1/chat/completions", json=body), 400,
                 "invalid_request_error", words)
    body["stream"] = True if change.get("stream") is None else body["stream"]
    assert_error(post(http_url, "/v1/chat/completions", json=body), 400,
                 "invalid_request_error", words)


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b"null", b'{"model": 1}', b"\xff\xfe"])
def test_unparsable_bodies_400(http_url: str, raw: bytes) -> None:
    for path in ("/v1/chat/completions", "/v1/feedback"):
        r = post(http_url, path, content=raw, headers={"content-type": "application/json"})
        assert_error(r, 400, "invalid_request_error")


def test_unknown_model_404(http_url: str, user_id: str) -> None:
    err = assert_error(post(http_url, "/v1/chat/completions",
                            json=chat_body(user_id, model="gpt-4o")), 404, "not_found_error",
                       "tiny-llama:base")
    assert err["code"] == "model_not_found"
    assert httpx.get(f"{http_url}/v1/models/gpt-4o", timeout=10).status_code == 404


def test_context_too_long_400(http_url: str, user_id: str) -> None:
    long = [{"role": "user", "content": "the sea is wide and deep " * 200}]
    err = assert_error(post(http_url, "/v1/chat/completions",
                            json=chat_body(user_id, messages=long)), 400,
                       "invalid_request_error", "context")
    assert err["code"] == "context_length_exceeded"


def test_body_too_large_413(secure_url: str, tokens: Tokens) -> None:
    big = [{"role": "user", "content": "x" * 100_000}]
    r = post(secure_url, "/v1/chat/completions", headers=tokens.headers("alice"),
             json={"model": MODEL, "messages": big})
    assert assert_error(r, 413, "invalid_request_error")["code"] == "request_too_large"


def test_routes_and_methods(http_url: str) -> None:
    assert_error(httpx.get(f"{http_url}/v1/nothing", timeout=10), 404, "not_found_error")
    assert_error(httpx.get(f"{http_url}/v1/chat/completions", timeout=10), 405,
                 "invalid_request_error")
    assert httpx.get(f"{http_url}/health", timeout=10).json() == {"status": "ok"}
    assert httpx.get(f"{http_url}/ready", timeout=10).status_code == 200


@pytest.mark.parametrize("body, words", [
    ({}, "exactly one of thumbs, ranking or score"),
    ({"thumbs": {"response_id": "r1.x.y", "up": True}, "ranking": {"response_ids": []}},
     "exactly one"),
    ({"ranking": {"response_ids": ["r1.a.b"]}}, "at least 2"),
    ({"thumbs": {"response_id": "nonsense", "up": True}}, "not a response id"),
    ({"thumbs": {"response_id": "r1.x.y"}}, "thumbs.up"),
    ({"score": {"name": "x", "value": 0.5, "id": "r1.x.y"}}, "does not map onto thumbs"),
    ({"thumbs": {"response_id": "r1.x.y", "up": True}, "feedback_id": "a b"}, "feedback_id"),
    ({"thumbs": {"response_id": "r1.x.y", "up": True}, "labeler_id": "../x"}, "labeler_id"),
])
def test_bad_feedback_400(http_url: str, user_id: str, body: dict[str, Any], words: str) -> None:
    assert_error(post(http_url, "/v1/feedback", json={"user": user_id, **body}), 400,
                 "invalid_request_error", words)


def test_idempotency_key_must_match_feedback_id(http_url: str, user_id: str) -> None:
    r = post(http_url, "/v1/feedback", headers={"Idempotency-Key": "k1"},
             json={"user": user_id, "feedback_id": "k2",
                   "thumbs": {"response_id": "r1.x.y", "up": True}})
    assert_error(r, 400, "invalid_request_error", "Idempotency-Key")


@pytest.fixture(scope="module")
def small_server(loop_thread, tiny_engine, broker, engine_config,  # type: ignore[no-untyped-def]
                 tmp_path_factory) -> Iterator[Any]:
    """One stream at a time."""
    from services.devstack.broker import free_port
    from services.server.main import AssistantServer

    cfg = make_server_config(tmp_path_factory.mktemp("small"), broker.bootstrap, engine_config,
                             http_port=free_port(), max_concurrent_streams=1)
    srv = loop_thread.call(AssistantServer, cfg, tiny_engine)
    loop_thread.run(srv.start())
    yield srv
    loop_thread.run(srv.stop())


def wait_idle(srv: Any) -> None:
    deadline = time.monotonic() + 10
    while srv.core.generation.running or srv.http.in_flight:
        assert time.monotonic() < deadline, "the call's work did not stop"
        time.sleep(0.05)


def test_overload_429_and_leaving_stops_the_work(small_server: Any, user_id: str) -> None:
    url = f"http://127.0.0.1:{small_server.http_port}"
    long = chat_body(user_id, max_tokens=400, temperature=0.0, stream=True)
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=long, timeout=60) as held:
        assert held.status_code == 200
        lines = held.iter_lines()  # kept: a dropped iterator closes the response
        next(lines)
        assert small_server.core.generation.running == 1
        for stream in (True, False):
            r = post(url, "/v1/chat/completions", json=chat_body(user_id, stream=stream))
            assert_error(r, 429, "rate_limit_error", "limit of 1 streams")
    wait_idle(small_server)  # the SSE client left: its engine work was aborted
    # a non-streaming call whose client gives up is stopped too
    with pytest.raises(httpx.ReadTimeout):
        post(url, "/v1/chat/completions", json=chat_body(user_id, max_tokens=400,
                                                           temperature=0.0), timeout=0.5)
    wait_idle(small_server)
    assert not small_server.engine._llm.output_processor.request_states
    ok = post(url, "/v1/chat/completions", json=chat_body(user_id))
    assert ok.status_code == 200, ok.text
    text = small_server.metrics.registry.get_sample_value
    assert text("personalize_server_requests_total",
                {"method": "Generate", "code": "RESOURCE_EXHAUSTED", "api": "http"}) == 2
    assert text("personalize_server_requests_total",
                {"method": "Generate", "code": "CANCELLED", "api": "http"}) == 2


def test_broker_down_feedback_503(loop_thread, tiny_engine, engine_config, tmp_path,  # type: ignore[no-untyped-def]
                                  user_id: str) -> None:
    from services.devstack.broker import free_port
    from services.server.main import AssistantServer

    cfg = make_server_config(tmp_path, f"127.0.0.1:{free_port()}", engine_config,
                             http_port=free_port())
    srv = loop_thread.call(AssistantServer, cfg, tiny_engine)
    loop_thread.run(srv.start())
    try:
        url = f"http://127.0.0.1:{srv.http_port}"
        out = post(url, "/v1/chat/completions", json=chat_body(user_id))
        assert out.status_code == 200, out.text  # generation keeps serving
        r = post(url, "/v1/feedback", json={"user": user_id, "thumbs": {
            "response_id": out.json()["id"], "up": True}})
        assert_error(r, 503, "service_unavailable_error")
    finally:
        loop_thread.run(srv.stop())
