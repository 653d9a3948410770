"""Auth and isolation on HTTP, as on gRPC: the OpenAI api key is the user's token; a
token acts only for its own user; nobody rates another user's responses."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai import OpenAI

from tests.http.conftest import Tokens

MODEL = "tiny-llama"
HELLO = [{"role": "user", "content": "hello"}]


def chat(url: str, token: str, **kw) -> openai.types.chat.ChatCompletion:  # type: ignore[no-untyped-def]
    client = OpenAI(base_url=f"{url}/v1", api_key=token, max_retries=0, timeout=60)
    return client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4, **kw)


def test_the_api_key_is_the_users_token(secure_url: str, secure_http, tokens: Tokens) -> None:  # type: ignore[no-untyped-def]
    out = chat(secure_url, tokens("alice"), n=2)
    ids = [c.model_extra["response_id"] for c in out.choices]
    ok = httpx.post(f"{secure_url}/v1/feedback", headers=tokens.headers("alice"),
                    json={"ranking": {"response_ids": ids}}, timeout=30)
    assert ok.status_code == 200, ok.text
    status = httpx.get(f"{secure_url}/v1/status", headers=tokens.headers("alice"), timeout=10)
    assert status.json()["user_id"] == "alice" and status.json()["feedback_accepted"] >= 1


@pytest.mark.parametrize("key", ["", "garbage", "Bearer x"])
def test_bad_credentials_401(secure_url: str, key: str) -> None:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    for method, path, body in (("POST", "/v1/chat/completions", {"model": MODEL,
                                                                  "messages": HELLO}),
                               ("POST", "/v1/feedback", {"thumbs": {"response_id": "r1.a.b",
                                                                    "up": True}}),
                               ("GET", "/v1/status", None), ("GET", "/v1/models", None)):
        r = httpx.request(method, f"{secure_url}{path}", json=body, headers=headers, timeout=10)
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"]["type"] == "authentication_error"
        assert r.headers["www-authenticate"] == "Bearer"
    with pytest.raises(openai.AuthenticationError):
        chat(secure_url, key or "none")


def test_a_token_acts_only_for_its_user(secure_url: str, tokens: Tokens) -> None:
    with pytest.raises(openai.PermissionDeniedError):
        chat(secure_url, tokens("bob"), user="alice")
    r = httpx.get(f"{secure_url}/v1/status", params={"user": "alice"},
                  headers=tokens.headers("bob"), timeout=10)
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    # an admin token names the user it acts for
    r = httpx.get(f"{secure_url}/v1/status", params={"user": "alice"},
                  headers=tokens.headers("ops", admin=True), timeout=10)
    assert r.status_code == 200 and r.json()["user_id"] == "alice"
    r = httpx.get(f"{secure_url}/v1/status", headers=tokens.headers("ops", admin=True),
                  timeout=10)
    assert r.status_code == 400 and "'user'" in r.json()["error"]["message"]


def test_nobody_rates_another_users_response(secure_url: str, tokens: Tokens) -> None:
    rid = chat(secure_url, tokens("alice")).id
    for headers, body in (
        (tokens.headers("bob"), {"thumbs": {"response_id": rid, "up": False}}),
        (tokens.headers("bob"), {"score": {"name": "x", "value": True, "id": rid}}),
        (tokens.headers("bob"), {"user": "alice", "thumbs": {"response_id": rid, "up": False}}),
        (tokens.headers("ops", admin=True), {"user": "bob",
                                              "thumbs": {"response_id": rid, "up": False}}),
    ):
        r = httpx.post(f"{secure_url}/v1/feedback", headers=headers, json=body, timeout=30)
        assert r.status_code == 403, r.text
    forged = rid[:-4] + ("AAAA" if not rid.endswith("AAAA") else "BBBB")
    r = httpx.post(f"{secure_url}/v1/feedback", headers=tokens.headers("alice"),
                   json={"thumbs": {"response_id": forged, "up": True}}, timeout=30)
    assert r.status_code == 400 and "signature" in r.json()["error"]["message"]


def test_a_user_erases_themself_over_http(secure_url: str, tokens: Tokens) -> None:
    """POST /v1/erase with the user's own key: the gRPC Erase (another user's key 403,
    none 401); feedback on an answer served before it is then refused."""
    out = chat(secure_url, tokens("erin"))
    rid = out.choices[0].model_extra["response_id"]
    r = httpx.post(f"{secure_url}/v1/erase", json={"user": "erin"},
                   headers=tokens.headers("bob"), timeout=30)
    assert r.status_code == 403, r.text
    assert httpx.post(f"{secure_url}/v1/erase", json={}, timeout=30).status_code == 401
    r = httpx.post(f"{secure_url}/v1/erase", json={}, headers=tokens.headers("erin"),
                   timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "erasure" and body["user_id"] == "erin"
    assert body["deleted_versions"] == [] and body["tombstone_offset"] >= 0
    r = httpx.post(f"{secure_url}/v1/feedback", headers=tokens.headers("erin"),
                   json={"thumbs": {"response_id": rid, "up": True}}, timeout=30)
    assert r.status_code == 400 and "erased" in r.json()["error"]["message"], r.text
    status = httpx.get(f"{secure_url}/v1/status", headers=tokens.headers("erin"), timeout=10)
    assert status.json()["feedback_accepted"] == 0
