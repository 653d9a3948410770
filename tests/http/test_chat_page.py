"""The built-in chat page (GET /) in a real headless browser: Debian's chromium driven
by Playwright for Python, against the session's in-process server (tiny engine, real
broker). A fresh user signs in, chats, ranks three streamed answers by clicking and
gives a thumb; the feedback is on the Kafka topic and the page's status shows it."""

from __future__ import annotations

import json
import os

import httpx

from tests.support.topics import read_topic

# `browser` and `page` (Debian's chromium through Playwright): tests/http/conftest.py


def sign_in(pg, base: str, credential: str, label: str = "User name") -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    pg.goto(base + "/")
    field = pg.get_by_label(label)
    expect(field).to_be_visible()
    field.fill(credential)
    pg.get_by_role("button", name="Sign in").click()
    expect(pg.get_by_role("heading", name="Conversation")).to_be_visible()


def send(pg, text: str, answers: int) -> None:  # type: ignore[no-untyped-def]
    pg.get_by_label("Answers to compare").select_option(str(answers))
    pg.get_by_label("Message").fill(text)
    pg.get_by_role("button", name="Send").click()


def test_rank_three_answers_and_thumb_one(page, http_url: str, broker,  # type: ignore[no-untyped-def]
                                          user_id: str) -> None:
    from playwright.sync_api import expect

    sign_in(page, http_url, user_id)
    field = page.locator("[data-field=user_id]")
    expect(field).to_have_text(user_id)
    expect(page.locator("[data-field=feedback_accepted]")).to_have_text("0")

    # 1. three streamed answers, ranked best first by clicking: 3, 1, 2
    send(page, "tell me about the sea", 3)
    for i in (1, 2, 3):
        expect(page.get_by_role("button", name=f"Rank answer {i}")).to_be_enabled()
    expect(page.locator(".turn.assistant .meta").first).to_have_text(
        "answered by the base model")
    submit = page.get_by_role("button", name="Submit ranking")
    for i in (3, 1):
        page.get_by_role("button", name=f"Rank answer {i}").click()
    expect(submit).to_be_disabled()  # every answer must be ranked
    page.get_by_role("button", name="Rank answer 2").click()
    for i, rank in ((3, "#1"), (1, "#2"), (2, "#3")):
        button = page.get_by_role("button", name=f"Rank answer {i}")
        expect(button).to_have_text(rank)
        expect(button).to_have_accessible_description(f"(ranked {rank})")
    if shot := os.environ.get("CHAT_PAGE_SCREENSHOT"):  # to look at the page
        page.screenshot(path=shot, full_page=True)
    submit.click()
    expect(page.get_by_text("Ranking sent")).to_be_visible()
    expect(page.locator("[data-field=feedback_accepted]")).to_have_text("1")

    # 2. a follow-up with one answer, rated with a thumb
    send(page, "and about the mountains?", 1)
    expect(page.locator(".turn.assistant")).to_have_count(2)
    up = page.get_by_role("button", name="Thumbs up for answer 1").last
    expect(up).to_be_enabled()
    up.click()
    expect(page.get_by_text("Thanks: rated up.")).to_be_visible()
    expect(page.locator("[data-field=feedback_accepted]")).to_have_text("2")
    expect(page.locator("[data-field=generations_served]")).to_have_text("4")

    # 3. what reached Kafka: the ranking in the clicked order, then the thumb
    gens = read_topic(broker.bootstrap, "generations",
                      lambda rs: sum(r["key"] == user_id for r in rs) >= 4)
    mine = [r["value"] for r in gens if r["key"] == user_id]
    first = [g for g in mine if g["num_candidates"] == 3]
    by_index = {g["candidate_index"]: g["response_id"] for g in first}
    follow_up = next(g for g in mine if g["num_candidates"] == 1)
    assert follow_up["messages"][0]["content"] == "tell me about the sea"
    assert [m["role"] for m in follow_up["messages"]] == ["user", "assistant", "user"]
    assert follow_up["messages"][1]["content"] == next(
        g["completion"] for g in first if g["candidate_index"] == 2), \
        "the conversation goes on with the answer ranked best"

    fbs = read_topic(broker.bootstrap, "feedback",
                     lambda rs: sum(r["key"] == user_id for r in rs) >= 2)
    feedback = [r["value"] for r in fbs if r["key"] == user_id]
    assert [f["kind"] for f in feedback] == ["ranking", "thumbs"]
    assert feedback[0]["response_ids"] == [by_index[2], by_index[0], by_index[1]]
    assert feedback[1]["response_ids"] == [follow_up["response_id"]]
    assert feedback[1]["up"] is True

    status = httpx.get(f"{http_url}/v1/status", params={"user": user_id}, timeout=10).json()
    assert status["feedback_accepted"] == 2 and status["generations_served"] == 4
    assert page.problems == []


def test_model_output_is_text_never_markup(page, http_url: str, user_id: str) -> None:  # type: ignore[no-untyped-def]
    """An answer carrying HTML is shown as text: no element, no script runs."""
    from playwright.sync_api import expect

    evil = '<img src=x onerror="window.pwned=1"><b>bold</b>'
    chunk = {"id": "r1.x", "object": "chat.completion.chunk", "created": 0, "model": "m",
             "system_fingerprint": "base",
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": evil},
                          "finish_reason": "stop", "response_id": "r1.x",
                          "adapter_version": ""}]}
    body = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n"
    page.route("**/v1/chat/completions",
               lambda route: route.fulfill(status=200, body=body,
                                           headers={"Content-Type": "text/event-stream"}))
    sign_in(page, http_url, user_id)
    send(page, "hello", 1)
    answer = page.locator(".turn.assistant .text")
    expect(answer).to_have_text(evil)
    assert answer.locator("img, b").count() == 0
    assert page.evaluate("window.pwned") is None


def test_auth_on_signs_in_with_a_token(page, secure_url: str, tokens) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    page.goto(secure_url + "/")
    expect(page.get_by_label("API token")).to_be_visible()
    page.get_by_label("API token").fill("not-a-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("Could not sign in")

    sign_in(page, secure_url, tokens("page-user"), label="API token")
    expect(page.locator("[data-field=user_id]")).to_have_text("page-user")
    expect(page.get_by_text("Signed in as page-user")).to_be_visible()
    # the browser logs each 401 (the auth probe, the bad token); nothing else
    assert all("401" in p for p in page.problems), page.problems


def test_page_files_and_headers(http_url: str) -> None:
    page = httpx.get(http_url + "/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert "http://" not in page.text and "https://" not in page.text, "nothing external"
    script = httpx.get(http_url + "/static/chat.js", timeout=10)
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "innerHTML" not in script.text
    assert script.headers["x-content-type-options"] == "nosniff"
    missing = httpx.get(http_url + "/static/nope.js", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
