"""CORS for chat front-ends served from another origin (``http_cors_origins``): off by
default (the session server sends no CORS headers), and with an origin configured a
page from that origin, in a real browser, streams a chat completion and sends feedback
while a page from any other origin is refused by the browser."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from services.devstack.broker import free_port

ALLOWED_PORT, OTHER_PORT = free_port(), free_port()
ALLOWED = f"http://localhost:{ALLOWED_PORT}"
OTHER = f"http://localhost:{OTHER_PORT}"
PREFLIGHT = {"Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, content-type"}


@pytest.fixture(scope="module")
def cors_url(server, loop_thread) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The session server's HTTP API (same core and engine) with CORS on for ALLOWED,
    on another port."""
    from services.server.http.app import HttpApi
    from services.server.http.runner import HttpServer

    api = HttpApi(dataclasses.replace(server.http._ctx, cors_origins=(ALLOWED,)))
    http = loop_thread.call(HttpServer, api.app, "127.0.0.1", 0, 5.0)
    port = loop_thread.run(http.start())
    yield f"http://127.0.0.1:{port}"
    loop_thread.run(http.stop())


def test_off_by_default(http_url: str) -> None:
    pre = httpx.options(f"{http_url}/v1/chat/completions",
                        headers={"Origin": ALLOWED, **PREFLIGHT}, timeout=10)
    assert "access-control-allow-origin" not in pre.headers
    got = httpx.get(f"{http_url}/v1/models", headers={"Origin": ALLOWED}, timeout=10)
    assert got.status_code == 200 and "access-control-allow-origin" not in got.headers


def test_allowed_origin_only(cors_url: str) -> None:
    pre = httpx.options(f"{cors_url}/v1/chat/completions",
                        headers={"Origin": ALLOWED, **PREFLIGHT}, timeout=10)
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == ALLOWED
    assert "authorization" in pre.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in pre.headers
    refused = httpx.options(f"{cors_url}/v1/chat/completions",
                            headers={"Origin": OTHER, **PREFLIGHT}, timeout=10)
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers
    # simple requests: the header only for the allowed origin, errors included
    ok = httpx.get(f"{cors_url}/v1/models", headers={"Origin": ALLOWED}, timeout=10)
    assert ok.headers["access-control-allow-origin"] == ALLOWED
    bad = httpx.get(f"{cors_url}/v1/status", headers={"Origin": ALLOWED}, timeout=10)
    assert bad.status_code == 400 and bad.headers["access-control-allow-origin"] == ALLOWED
    other = httpx.get(f"{cors_url}/v1/models", headers={"Origin": OTHER}, timeout=10)
    assert "access-control-allow-origin" not in other.headers


SCRIPT = """async ([base, user]) => {
  const post = (path, body) => fetch(base + path, {method: "POST",
      headers: {"Content-Type": "application/json", "Authorization": "Bearer unused"},
      body: JSON.stringify(body)});
  const r = await post("/v1/chat/completions", {model: "tiny-llama", user, n: 2,
      stream: true, messages: [{role: "user", content: "hello from elsewhere"}]});
  const text = await r.text();
  const ids = [...new Set([...text.matchAll(/"response_id": ?"([^"]+)"/g)].map(m => m[1]))];
  const f = await post("/v1/feedback", {user, ranking: {response_ids: ids}});
  return {status: r.status, done: text.includes("[DONE]"), ids: ids.length,
          feedback: f.status};
}"""


class _Blank(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><title>elsewhere</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def origins() -> Iterator[None]:
    """Blank pages on ALLOWED and OTHER: other sites' chat front-ends, on loopback too
    (the browser's local-network rules would refuse a public page calling loopback)."""
    servers = [ThreadingHTTPServer(("127.0.0.1", p), _Blank) for p in (ALLOWED_PORT,
                                                                        OTHER_PORT)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    yield
    for s in servers:
        s.shutdown()
        s.server_close()


def open_origin(page: Any, origin: str) -> None:
    page.goto(origin + "/")


@pytest.mark.usefixtures("origins")
def test_browser_on_the_allowed_origin_chats_and_ranks(page, cors_url: str,  # type: ignore[no-untyped-def]
                                                       http_url: str, user_id: str) -> None:
    open_origin(page, ALLOWED)
    out = page.evaluate(SCRIPT, [cors_url, user_id])
    assert out == {"status": 200, "done": True, "ids": 2, "feedback": 200}
    status = httpx.get(f"{http_url}/v1/status", params={"user": user_id}, timeout=10).json()
    assert status["feedback_accepted"] == 1  # the same core as the session server


@pytest.mark.usefixtures("origins")
def test_browser_on_another_origin_is_refused(page, cors_url: str,  # type: ignore[no-untyped-def]
                                              user_id: str) -> None:
    open_origin(page, OTHER)
    error = page.evaluate("""async ([base, user]) => {
      try { await fetch(base + "/v1/chat/completions", {method: "POST",
              headers: {"Content-Type": "application/json"},
              body: JSON.stringify({model: "tiny-llama", user, messages: []})});
            return "reached"; }
      catch (e) { return e.name; } }""", [cors_url, user_id])
    assert error == "TypeError"  # the browser's CORS refusal
    assert any("blocked by CORS policy" in p for p in page.problems), page.problems
