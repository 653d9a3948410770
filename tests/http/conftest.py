"""An auth-on server for the HTTP tests: another AssistantServer on the session's tiny
engine and broker, with its own topics and store, its HTTP API on a free port."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.contract.auth import AuthConfig, Authenticator
from services.server.config import GenerationLimits
from tests.conftest import make_server_config
from tests.support.topics import isolated_kafka

AUTH = AuthConfig(secrets=secrets.token_hex(32))


class Tokens:
    def __init__(self) -> None:
        self._auth = Authenticator(AUTH)

    def __call__(self, user: str, admin: bool = False) -> str:
        return self._auth.issue(user, 600.0, admin=admin)

    def headers(self, user: str, admin: bool = False) -> dict[str, str]:
        return {"Authorization": f"Bearer {self(user, admin)}"}


@pytest.fixture(scope="session")
def tokens() -> Tokens:
    return Tokens()


@pytest.fixture(scope="session")
def secure_http(loop_thread, tiny_engine, broker, engine_config,  # type: ignore[no-untyped-def]
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Auth on, tiny generation limits; ``.http_port`` serves the HTTP API."""
    from services.devstack.broker import free_port
    from services.server.main import AssistantServer

    store: Path = tmp_path_factory.mktemp("secure-http-store")
    cfg = make_server_config(store, broker.bootstrap, engine_config,
                             kafka=isolated_kafka(broker.bootstrap, "secure-http"), auth=AUTH,
                             http_port=free_port(), http_max_body_bytes=64 * 1024,
                             limits=GenerationLimits(default_max_tokens=4, max_tokens_limit=8))
    srv = loop_thread.call(AssistantServer, cfg, tiny_engine)
    loop_thread.run(srv.start())
    yield srv
    loop_thread.run(srv.stop())


@pytest.fixture(scope="session")
def secure_url(secure_http) -> str:  # type: ignore[no-untyped-def]
    return f"http://127.0.0.1:{secure_http.http_port}"


# --- a real browser: Debian's chromium driven by Playwright for Python ---------------------
# (Playwright's own browser download is not used; `make test` installs chromium.)

CHROMIUM = os.environ.get("PERSONALIZE_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
BROWSER_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y "
                    "chromium; `make test` does it as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    """A fresh page in a fresh context; ``page.problems`` collects console errors and
    uncaught exceptions (CSP violations among them)."""
    context = browser.new_context()
    pg = context.new_page()
    pg.set_default_timeout(BROWSER_TIMEOUT_MS)
    problems: list[str] = []
    pg.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: problems.append(str(e)))
    pg.problems = problems
    yield pg
    context.close()
