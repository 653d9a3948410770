"""Python client SDK for chat apps.

    from services.client import AssistantClient
    with AssistantClient("127.0.0.1:50051") as client:
        for piece in client.stream("alice", "Hi!"):
            print(piece.text, end="")
        candidates = client.complete("alice", "Name a fruit", num_candidates=3)
        client.rank("alice", [c.response_id for c in candidates])

Several server replicas: pass their addresses comma-separated (or as a list),
``AssistantClient("10.0.0.1:50051,10.0.0.2:50051")``; calls go to them in turn
(round robin, one channel each). Any replica accepts feedback on a response
another one generated. Feedback calls carry a client-made feedback_id, so
retries after UNAVAILABLE (each on the next replica) never count twice.
With auth on, pass the user's bearer token:
``AssistantClient(target, token=...)`` (``personalize token --user alice``).
Operators with an admin token have the lifecycle calls: ``list_versions``,
``rollback``, ``pin``, ``unpin`` and ``reset`` (docs/operations.md#lifecycle).
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import grpc

from personalize.v1 import assistant_pb2 as pb
from personalize.v1 import assistant_pb2_grpc as pb_grpc

Messages = str | Sequence[tuple[str, str]] | Sequence[dict[str, str]]


@dataclass
class Candidate:
    """One whole completion."""

    response_id: str
    index: int
    text: str = ""
    adapter_version: str = ""
    finish_reason: str = ""
    completion_tokens: int = 0


def _messages(messages: Messages) -> list[pb.ChatMessage]:
    if isinstance(messages, str):
        return [pb.ChatMessage(role="user", content=messages)]
    out = []
    for m in messages:
        role, content = (m["role"], m["content"]) if isinstance(m, dict) else m
        out.append(pb.ChatMessage(role=role, content=content))
    return out


def parse_targets(target: str | Sequence[str]) -> list[str]:
    """Server addresses from ``"host:port[,host:port...]"`` or a list of them."""
    items = target.split(",") if isinstance(target, str) else list(target)
    targets = [t.strip() for t in items if t.strip()]
    if not targets:
        raise ValueError("no server address given")
    return targets


class AssistantClient:
    def __init__(self, target: str | Sequence[str] = "127.0.0.1:50051",
                 timeout_s: float = 120.0, token: str | None = None,
                 feedback_retries: int = 3) -> None:
        self.targets = parse_targets(target)
        self._channels = [grpc.insecure_channel(t) for t in self.targets]
        self._stubs = [pb_grpc.AssistantStub(c) for c in self._channels]
        self._turn = itertools.count()
        self._timeout = timeout_s
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._retries = feedback_retries

    def __enter__(self) -> AssistantClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def _stub(self) -> pb_grpc.AssistantStub:
        """The next replica's stub (round robin; one call stays on one replica)."""
        return self._stubs[next(self._turn) % len(self._stubs)]

    def stream(self, user_id: str, messages: Messages, *, num_candidates: int = 1,
               max_tokens: int = 0, temperature: float | None = None,
               top_p: float | None = None, seed: int | None = None,
               base_model: bool = False) -> Iterator[pb.GenerateResponse]:
        """Stream the pieces of every candidate as they are generated.

        ``base_model`` answers without the user's adapter, for comparisons.
        """
        request = pb.GenerateRequest(user_id=user_id, messages=_messages(messages),
                                     num_candidates=num_candidates, max_tokens=max_tokens,
                                     temperature=temperature, top_p=top_p, seed=seed,
                                     base_model=base_model)
        yield from self._stub().Generate(request, timeout=self._timeout, metadata=self._metadata)

    def complete(self, user_id: str, messages: Messages, **kwargs) -> list[Candidate]:  # type: ignore[no-untyped-def]
        """Whole candidates, ordered by index."""
        found: dict[int, Candidate] = {}
        for piece in self.stream(user_id, messages, **kwargs):
            c = found.setdefault(piece.candidate_index,
                                 Candidate(piece.response_id, piece.candidate_index))
            c.text += piece.text
            c.adapter_version = piece.adapter_version
            if piece.finished:
                c.finish_reason, c.completion_tokens = piece.finish_reason, piece.completion_tokens
        return [found[i] for i in sorted(found)]

    def thumbs(self, user_id: str, response_id: str, up: bool, *, labeler_id: str = "",
               feedback_id: str = "") -> pb.FeedbackAck:
        return self._feedback(pb.FeedbackRequest(
            user_id=user_id, labeler_id=labeler_id, feedback_id=feedback_id or uuid.uuid4().hex,
            thumbs=pb.Thumbs(response_id=response_id, up=up)))

    def rank(self, user_id: str, response_ids: Sequence[str], *, labeler_id: str = "",
             feedback_id: str = "") -> pb.FeedbackAck:
        """Rank responses of one Generate call, best first."""
        return self._feedback(pb.FeedbackRequest(
            user_id=user_id, labeler_id=labeler_id, feedback_id=feedback_id or uuid.uuid4().hex,
            ranking=pb.Ranking(response_ids=list(response_ids))))

    def _feedback(self, request: pb.FeedbackRequest) -> pb.FeedbackAck:
        delay = 0.5
        for attempt in range(self._retries + 1):
            try:
                return self._stub().SubmitFeedback(request, timeout=self._timeout,
                                                 metadata=self._metadata)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == self._retries:
                    raise
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def status(self, user_id: str) -> pb.UserStatus:
        return self._stub().GetUserStatus(pb.UserStatusRequest(user_id=user_id),
                                        timeout=self._timeout, metadata=self._metadata)

    # --- lifecycle operations (admin token) --------------------------------------------
    def list_versions(self, user_id: str) -> pb.VersionList:
        """The user's versions, oldest first, with their manifests."""
        return self._stub().ListVersions(pb.LifecycleRequest(user_id=user_id),
                                         timeout=self._timeout, metadata=self._metadata)

    def rollback(self, user_id: str, version: str) -> pb.LifecycleResult:
        """Serve ``version``'s weights again (as a new version)."""
        return self._stub().Rollback(pb.LifecycleRequest(user_id=user_id, version=version),
                                     timeout=self._timeout, metadata=self._metadata)

    def pin(self, user_id: str, version: str) -> pb.LifecycleResult:
        """Pin the user to ``version``: the trainer leaves their served version alone."""
        return self._stub().Pin(pb.LifecycleRequest(user_id=user_id, version=version),
                                timeout=self._timeout, metadata=self._metadata)

    def unpin(self, user_id: str) -> pb.LifecycleResult:
        """Lift a pin or a reset."""
        return self._stub().Unpin(pb.LifecycleRequest(user_id=user_id),
                                  timeout=self._timeout, metadata=self._metadata)

    def reset(self, user_id: str) -> pb.LifecycleResult:
        """Serve the user the base model (their data and versions are kept)."""
        return self._stub().Reset(pb.LifecycleRequest(user_id=user_id),
                                  timeout=self._timeout, metadata=self._metadata)

    def erase(self, user_id: str) -> pb.EraseResult:
        """Erase the user's adapters, status, reward heads, policy state and training data
        (an admin token, or the user's own). Feedback on answers served before it is then
        refused with FAILED_PRECONDITION."""
        return self._stub().Erase(pb.LifecycleRequest(user_id=user_id),
                                  timeout=self._timeout, metadata=self._metadata)
