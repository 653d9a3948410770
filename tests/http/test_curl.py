"""A non-Python client: plain ``curl`` against the HTTP API (auth on), streaming and
not, then feedback on the ids it got."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest

from tests.http.conftest import Tokens

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


def curl(url: str, token: str, body: dict[str, Any] | None = None, *extra: str) -> str:
    args = ["curl", "-sS", "--max-time", "60", "-H", f"Authorization: Bearer {token}", *extra]
    if body is not None:
        args += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
    done = subprocess.run([*args, url], capture_output=True, text=True, timeout=90, check=True)
    return done.stdout


def test_curl_chat_stream_and_feedback(secure_url: str, tokens: Tokens) -> None:
    token = tokens("carol")
    models = json.loads(curl(f"{secure_url}/v1/models", token))
    model = models["data"][0]["id"]
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "n": 2}
    out = json.loads(curl(f"{secure_url}/v1/chat/completions", token, body))
    ids = [c["response_id"] for c in out["choices"]]
    assert out["id"] == ids[0] and len(ids) == 2

    raw = curl(f"{secure_url}/v1/chat/completions", token, {**body, "stream": True}, "-N")
    events = [line[len("data: "):] for line in raw.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["choices"][0]["index"] for c in chunks} == {0, 1}
    streamed = sorted({c["id"] for c in chunks})

    ranked = json.loads(curl(f"{secure_url}/v1/feedback", token,
                             {"ranking": {"response_ids": streamed[::-1]}},
                             "-H", "Idempotency-Key: curl-1"))
    assert ranked["feedback_id"] == "curl-1" and ranked["offset"] >= 0
    thumbs = json.loads(curl(f"{secure_url}/v1/feedback", token,
                             {"thumbs": {"response_id": ids[1], "up": True}}))
    assert thumbs["object"] == "feedback"
    status = json.loads(curl(f"{secure_url}/v1/status", token))
    assert status["user_id"] == "carol" and status["feedback_accepted"] == 2
    err = json.loads(curl(f"{secure_url}/v1/status", "not-a-token"))
    assert err["error"]["type"] == "authentication_error"
