"""bench.load.Load: an RPC error is counted and its stream goes on; answers are counted by
request, candidate and token, round-robin over the users."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from bench.load import Load, LoadShape
from services.client.sdk import Candidate


class Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "server restarting"


class FlakyClient:
    """Every third request fails; the others answer ``candidates`` of 5 tokens each."""

    def __init__(self, log: list[str], lock: threading.Lock) -> None:
        self.log, self.lock, self.calls, self.closed = log, lock, 0, False

    def complete(self, user_id: str, messages: str, **kwargs: float) -> list[Candidate]:
        time.sleep(0.001)
        self.calls += 1
        with self.lock:
            self.log.append(user_id)
        if self.calls % 3 == 0:
            raise Unavailable()
        return [Candidate(f"r{self.calls}", i, completion_tokens=5)
                for i in range(int(kwargs["num_candidates"]))]

    def close(self) -> None:
        self.closed = True


def test_errors_are_counted_and_the_load_goes_on() -> None:
    log: list[str] = []
    clients: list[FlakyClient] = []
    lock = threading.Lock()

    def connect(target: str, timeout_s: float) -> FlakyClient:
        clients.append(FlakyClient(log, lock))
        return clients[-1]

    with Load("unused:0", ["a", "b"], 2, LoadShape(candidates=3), connect=connect) as load:
        deadline = time.monotonic() + 10.0
        while load.failed < 4 and time.monotonic() < deadline:
            time.sleep(0.005)
    calls = sum(c.calls for c in clients)
    assert load.failed >= 4, "errors ended the streams instead of being counted"
    assert load.requests + load.failed == calls
    assert load.completions == 3 * load.requests
    assert load.tokens_out == 15 * load.requests
    assert load.errors[0] == "StatusCode.UNAVAILABLE: server restarting"
    assert {"a", "b"} == set(log)
    assert all(c.closed for c in clients) and len(clients) == 2


def test_a_load_needs_users_and_threads() -> None:
    with pytest.raises(ValueError):
        Load("unused:0", [], 1)
    with pytest.raises(ValueError):
        Load("unused:0", ["a"], 0)
