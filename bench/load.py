"""A steady serving load for benchmarks that time something else beside the server.

``Load`` runs ``threads`` clients in background threads, each sending completion requests
back to back, round-robin over ``users`` and ``bench.common.PROMPTS``, and counts what came
back: requests answered, candidates, completion tokens, and RPC errors (with their codes).
An error is counted and the stream goes on, so a failing server shows in ``failed``
instead of silently thinning the load.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc

from bench.common import PROMPTS
from services.client.sdk import AssistantClient, Candidate


class CompletionClient(Protocol):
    def complete(self, user_id: str, messages: str, **kwargs: float) -> list[Candidate]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class LoadShape:
    """What each request asks for."""

    max_tokens: int = 32
    candidates: int = 1
    temperature: float = 0.0


class Load:
    """Clients asking for completions back to back until the ``with`` block ends."""

    def __init__(self, target: str, users: Sequence[str], threads: int,
                 shape: LoadShape = LoadShape(), *, timeout_s: float = 600.0,
                 connect: Callable[[str, float], CompletionClient] | None = None) -> None:
        if not users or threads < 1:
            raise ValueError("a load needs at least one user and one thread")
        self.users, self.shape = list(users), shape
        self.requests = self.failed = self.completions = self.tokens_out = 0
        self.errors: list[str] = []
        self._connect = connect or (lambda t, s: AssistantClient(t, timeout_s=s))
        self._target, self._timeout_s = target, timeout_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(threads)]

    def _run(self, stream: int) -> None:
        client = self._connect(self._target, self._timeout_s)
        try:
            i = stream
            while not self._stop.is_set():
                user, prompt = self.users[i % len(self.users)], PROMPTS[i % len(PROMPTS)]
                i += 1
                try:
                    done = client.complete(user, prompt, max_tokens=self.shape.max_tokens,
                                           num_candidates=self.shape.candidates,
                                           temperature=self.shape.temperature)
                except grpc.RpcError as exc:
                    with self._lock:
                        self.failed += 1
                        self.errors.append(f"{exc.code()}: {exc.details()}")
                    continue
                with self._lock:
                    self.requests += 1
                    self.completions += len(done)
                    self.tokens_out += sum(c.completion_tokens for c in done)
        finally:
            client.close()

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self._timeout_s + 30.0)
