"""Servers for the hardening suite: extra AssistantServers on the session's tiny
engine, each with its own adapter store and Kafka topics, and bearer tokens."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from personalize.v1 import assistant_pb2_grpc
from services.contract.auth import AuthConfig, Authenticator
from services.server.config import GenerationLimits
from tests.conftest import make_server_config
from tests.support.topics import isolated_kafka

SECRET = secrets.token_hex(32)
AUTH = AuthConfig(secrets=SECRET)
Metadata = tuple[tuple[str, str], ...]


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


class Tokens:
    """Tokens signed with the secure server's secret."""

    def __init__(self, cfg: AuthConfig = AUTH) -> None:
        self.auth = Authenticator(cfg)

    def token(self, user: str, admin: bool = False, ttl_s: float = 600.0) -> str:
        return self.auth.issue(user, ttl_s, admin=admin)

    def __call__(self, user: str, admin: bool = False) -> Metadata:
        return bearer(self.token(user, admin))


class Servers:
    """Starts AssistantServers on the shared engine; stops them all at the end."""

    def __init__(self, loop_thread, engine, engine_config, tmp: Path) -> None:  # type: ignore[no-untyped-def]
        self._loop, self._engine, self._engine_config = loop_thread, engine, engine_config
        self._tmp = tmp
        self._running: list[Any] = []

    def start(self, kafka, store: Path | None = None, **overrides: Any):  # type: ignore[no-untyped-def]
        from services.server.main import AssistantServer

        store = store or self._tmp / f"store-{len(self._running)}"
        cfg = make_server_config(store, kafka.bootstrap_servers, self._engine_config,
                                 kafka=kafka, **overrides)
        srv = self._loop.call(AssistantServer, cfg, self._engine)
        self._loop.run(srv.start())
        self._running.append(srv)
        return srv

    def stop(self, srv) -> None:  # type: ignore[no-untyped-def]
        if srv in self._running:
            self._running.remove(srv)
            self._loop.run(srv.stop())

    def stop_all(self) -> None:
        for srv in list(self._running):
            self.stop(srv)


@pytest.fixture(scope="session")
def servers(loop_thread, tiny_engine, engine_config,  # type: ignore[no-untyped-def]
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    s = Servers(loop_thread, tiny_engine, engine_config, tmp_path_factory.mktemp("servers"))
    yield s
    s.stop_all()


@pytest.fixture(scope="session")
def tokens() -> Tokens:
    return Tokens()


@pytest.fixture(scope="session")
def secure_server(servers: Servers, broker):  # type: ignore[no-untyped-def]
    """Auth on; tiny generation limits so fuzzing stays fast."""
    return servers.start(isolated_kafka(broker.bootstrap, "secure"), auth=AUTH,
                         limits=GenerationLimits(default_max_tokens=4, max_tokens_limit=8))


@pytest.fixture(scope="session")
def secure_channel(secure_server) -> Iterator[grpc.Channel]:  # type: ignore[no-untyped-def]
    ch = grpc.insecure_channel(f"127.0.0.1:{secure_server.port}")
    yield ch
    ch.close()


@pytest.fixture(scope="session")
def secure_stub(secure_channel: grpc.Channel):  # type: ignore[no-untyped-def]
    return assistant_pb2_grpc.AssistantStub(secure_channel)
