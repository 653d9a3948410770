"""The built-in chat page: static HTML, JS and CSS (services/server/http/static/) served
at ``/`` by the HTTP API's own server. The page is a client of the public API only
(docs/api.md), so it doubles as a reference client; no build step, nothing fetched
from elsewhere. And CORS, for chat pages served from other origins.
"""

from __future__ import annotations

from pathlib import Path

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).with_name("static")

# The page loads only its own files and talks only to this origin.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class _Static(StaticFiles):
    """StaticFiles with the page's security headers on every answer."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response


async def index(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", headers=SECURITY_HEADERS)


def page_routes() -> list[BaseRoute]:
    """``/`` (the page) and ``/static/*`` (its script and style sheet)."""
    return [Route("/", index, methods=["GET"]),
            Mount("/static", app=_Static(directory=STATIC_DIR), name="static")]


def cors(origins: tuple[str, ...]) -> list[Middleware]:
    """CORS for chat front-ends served from other origins (``*``: any). The token travels
    in the Authorization header, never in a cookie, so credentials stay off."""
    if not origins:
        return []
    return [Middleware(CORSMiddleware, allow_origins=list(origins),
                       allow_methods=["GET", "POST"],
                       allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
                       max_age=600)]
