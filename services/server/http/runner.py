"""uvicorn on the server's own event loop (the loop the engine and gRPC run on)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn


class _Server(uvicorn.Server):
    """Leaves the signals to the process (services/server/main.py stops everything)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """Serves an ASGI app on ``host:port`` until stopped; in-flight calls drain."""

    def __init__(self, app: Any, host: str, port: int, drain_timeout_s: float) -> None:
        self._app, self._host, self._port = app, host, port
        self._drain = drain_timeout_s
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Binds (an OSError if the port is taken), serves; returns the port."""
        sock = socket.create_server((self._host, self._port))
        config = uvicorn.Config(self._app, lifespan="off", log_config=None, access_log=False,
                                timeout_graceful_shutdown=self._drain)
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                sock.close()
                self._task.result()  # raises what stopped it
                raise RuntimeError("the HTTP server stopped during start-up")
            await asyncio.sleep(0.01)
        return int(sock.getsockname()[1])

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        await self._task
