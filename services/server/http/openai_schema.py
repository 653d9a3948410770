"""Request models of the HTTP API (OpenAI Chat Completions shape, plus feedback) and
the pure functions that turn the core's chunks into OpenAI response bodies.

Parsing only checks shapes and types; the ranges and the limits are checked by
services/server/validation.py, exactly as for gRPC.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.contract.errors import InvalidArgument
from services.server.generation import Chunk
from services.server.validation import Message

BASE_SUFFIX = ":base"
"""A model id ending with it asks for the base model instead of the user's adapter."""
INT64 = 2**63 - 1


class _Lenient(BaseModel):
    """Fields that OpenAI clients send and this server has no use for are ignored."""

    model_config = ConfigDict(extra="ignore")


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class ChatMessageIn(_Lenient):
    role: str
    content: str | list[TextPart] | None = None

    def to_message(self) -> Message:
        if isinstance(self.content, list):
            text = "".join(part.text for part in self.content)
        else:
            text = self.content or ""
        # "developer" is OpenAI's newer name for the system role
        return Message("system" if self.role == "developer" else self.role, text)


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatCompletionRequest(_Lenient):
    """POST /v1/chat/completions."""

    model: str
    messages: list[ChatMessageIn]
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = Field(None, ge=-INT64 - 1, le=INT64)
    stop: str | list[str] | None = None
    user: str | None = None
    # accepted at their defaults only (anything else changes the answer's meaning)
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def refuse_unsupported(self) -> None:
        """InvalidArgument for a parameter this server cannot honour."""
        if self.stop:
            raise InvalidArgument("stop sequences are not supported by this server: leave "
                                  "'stop' unset (or null/empty)")
        if self.frequency_penalty or self.presence_penalty:
            raise InvalidArgument("frequency_penalty and presence_penalty are not supported: "
                                  "leave them unset or 0")
        if self.logprobs or self.top_logprobs:
            raise InvalidArgument("logprobs are not supported: leave them unset")
        if self.logit_bias:
            raise InvalidArgument("logit_bias is not supported: leave it unset")
        if self.tools or self.functions:
            raise InvalidArgument("tools and functions are not supported by this server")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise InvalidArgument("response_format: only {'type': 'text'} is supported")

    @property
    def completion_tokens(self) -> int:
        """The token bound asked for; 0 leaves it to the server's default."""
        return self.max_completion_tokens or self.max_tokens or 0

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ThumbsIn(_Lenient):
    response_id: str
    up: bool


class RankingIn(_Lenient):
    response_ids: list[str]
    """Best first."""


class ScoreIn(_Lenient):
    """A score as observability tools send it (Langfuse ``name``/``value``, LangSmith
    ``key``/``score``): a named numeric or boolean value on one completion."""

    id: str
    """The completion scored: a chat completion's ``id`` or a choice's ``response_id``."""
    name: str = Field("", max_length=200)
    value: bool | float

    def thumbs(self) -> ThumbsIn:
        """true / 1 is thumbs up; false / 0 / -1 is thumbs down; anything else is refused."""
        if isinstance(self.value, bool):
            return ThumbsIn(response_id=self.id, up=self.value)
        if self.value == 1:
            return ThumbsIn(response_id=self.id, up=True)
        if self.value in (0, -1):
            return ThumbsIn(response_id=self.id, up=False)
        raise InvalidArgument(f"score.value {self.value!r} does not map onto thumbs: send "
                              "true or 1 (up), false, 0 or -1 (down)")


class EraseRequest(_Lenient):
    """POST /v1/erase: the user (from the token when auth is on)."""

    user: str | None = None


class FeedbackRequest(_Lenient):
    """POST /v1/feedback: exactly one of thumbs, ranking or score."""

    user: str | None = None
    labeler_id: str | None = None
    feedback_id: str | None = None
    thumbs: ThumbsIn | None = None
    ranking: RankingIn | None = None
    score: ScoreIn | None = None

    def kind_and_ids(self) -> tuple[str, list[str], bool | None]:
        given = [k for k in ("thumbs", "ranking", "score") if getattr(self, k) is not None]
        if len(given) != 1:
            raise InvalidArgument("feedback must carry exactly one of thumbs, ranking or score"
                                  + (f" (got {', '.join(given)})" if given else ""))
        if self.ranking is not None:
            return "ranking", list(self.ranking.response_ids), None
        thumbs = self.thumbs if self.thumbs is not None else self.score.thumbs()  # type: ignore[union-attr]
        return "thumbs", [thumbs.response_id], thumbs.up


# --- responses ---------------------------------------------------------------------------


def _choice_extra(c: Chunk) -> dict[str, Any]:
    return {"response_id": c.response_id, "adapter_version": c.adapter_version}


def fingerprint(version: str) -> str:
    """system_fingerprint: which weights answered (the adapter version, or "base")."""
    return version or "base"


def completion_body(chunks: Iterable[Chunk], model: str, created: int) -> dict[str, Any]:
    """A whole ``chat.completion`` from every chunk of one Generate call."""
    texts: dict[int, list[str]] = {}
    finals: dict[int, Chunk] = {}
    for c in chunks:
        texts.setdefault(c.candidate_index, []).append(c.text)
        if c.finished:
            finals[c.candidate_index] = c
    choices = [{"index": i, "message": {"role": "assistant", "content": "".join(texts[i])},
                "finish_reason": f.finish_reason, "logprobs": None, **_choice_extra(f)}
               for i, f in sorted(finals.items())]
    first = finals[min(finals)]
    return {"id": first.response_id, "object": "chat.completion", "created": created,
            "model": model, "system_fingerprint": fingerprint(first.adapter_version),
            "choices": choices, "usage": usage(finals.values())}


def usage(finals: Iterable[Chunk]) -> dict[str, int]:
    finals = list(finals)
    prompt = finals[0].prompt_tokens if finals else 0
    completion = sum(f.completion_tokens for f in finals)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def chunk_body(c: Chunk, model: str, created: int, first_of_choice: bool,
               include_usage: bool) -> dict[str, Any]:
    """One ``chat.completion.chunk``; its id is the response id of the choice it carries."""
    delta: dict[str, Any] = {"role": "assistant"} if first_of_choice else {}
    if c.text or first_of_choice:
        delta["content"] = c.text
    body: dict[str, Any] = {
        "id": c.response_id, "object": "chat.completion.chunk", "created": created,
        "model": model, "system_fingerprint": fingerprint(c.adapter_version),
        "choices": [{"index": c.candidate_index, "delta": delta, "logprobs": None,
                     "finish_reason": c.finish_reason if c.finished else None,
                     **_choice_extra(c)}]}
    if include_usage:
        body["usage"] = None
    return body


def usage_chunk_body(first_id: str, finals: Iterable[Chunk], model: str,
                     created: int) -> dict[str, Any]:
    """The last chunk when ``stream_options.include_usage`` is set: no choices, the usage."""
    return {"id": first_id, "object": "chat.completion.chunk", "created": created,
            "model": model, "choices": [], "usage": usage(finals)}


def models_body(model_id: str, created: int) -> dict[str, Any]:
    return {"object": "list", "data": [
        {"id": model_id, "object": "model", "created": created, "owned_by": "personalize",
         "description": "the base model with the caller's own adapter (base until one is "
                        "trained)"},
        {"id": model_id + BASE_SUFFIX, "object": "model", "created": created,
         "owned_by": "personalize", "description": "the base model, no adapter"}]}
