"""Pure validation of client input into plain, trusted dataclasses."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from services.contract.errors import InvalidArgument
from services.contract.ids import validate_user_id
from services.server.config import GenerationLimits

ROLES = ("system", "user", "assistant")
_FEEDBACK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
MAX_RANKING = 16


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class GenerateParams:
    """A validated Generate request."""

    user_id: str
    messages: tuple[Message, ...]
    num_candidates: int
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    base_model: bool = False


@dataclass(frozen=True)
class FeedbackParams:
    """A validated SubmitFeedback request (response ids not yet verified)."""

    user_id: str
    labeler_id: str
    feedback_id: str
    kind: str  # "thumbs" | "ranking"
    response_ids: tuple[str, ...]
    up: bool | None


def validate_messages(messages: Sequence[Message], limits: GenerationLimits) -> tuple[Message, ...]:
    if not messages:
        raise InvalidArgument("messages is empty: send at least one chat message")
    if len(messages) > limits.max_messages:
        raise InvalidArgument(f"too many messages: {len(messages)} > {limits.max_messages}")
    for i, m in enumerate(messages):
        if m.role not in ROLES:
            raise InvalidArgument(
                f"messages[{i}].role {m.role[:40]!r} is unknown: use one of {', '.join(ROLES)}"
            )
        if len(m.content) > limits.max_message_chars:
            raise InvalidArgument(
                f"messages[{i}].content is longer than {limits.max_message_chars} characters"
            )
    if messages[-1].role == "assistant":
        raise InvalidArgument("the last message must not be from the assistant")
    return tuple(messages)


def validate_generate(
    user_id: str,
    messages: Sequence[Message],
    num_candidates: int,
    max_tokens: int,
    temperature: float | None,
    top_p: float | None,
    seed: int | None,
    limits: GenerationLimits,
    base_model: bool = False,
) -> GenerateParams:
    """Check every field of a Generate request; defaults fill what was left unset."""
    validate_user_id(user_id)
    msgs = validate_messages(messages, limits)
    n = num_candidates or 1
    if not 1 <= n <= limits.max_candidates:
        raise InvalidArgument(f"num_candidates must be in [1, {limits.max_candidates}], got {n}")
    tokens = max_tokens or limits.default_max_tokens
    if not 1 <= tokens <= limits.max_tokens_limit:
        raise InvalidArgument(
            f"max_tokens must be in [1, {limits.max_tokens_limit}], got {max_tokens}"
        )
    temp = limits.default_temperature if temperature is None else temperature
    if not math.isfinite(temp) or temp < 0 or temp > limits.max_temperature:
        raise InvalidArgument(
            f"temperature must be in [0, {limits.max_temperature}], got {temperature}"
        )
    p = 1.0 if top_p is None else top_p
    if not math.isfinite(p) or not 0 < p <= 1:
        raise InvalidArgument(f"top_p must be in (0, 1], got {top_p}")
    return GenerateParams(user_id, msgs, n, tokens, float(temp), float(p), seed, base_model)


def validate_feedback(
    user_id: str,
    labeler_id: str,
    feedback_id: str,
    kind: str | None,
    response_ids: Sequence[str],
    up: bool | None,
) -> FeedbackParams:
    """Check the shape of a SubmitFeedback request (signatures are checked by the core)."""
    validate_user_id(user_id)
    labeler = validate_user_id(labeler_id, "labeler_id") if labeler_id else user_id
    if feedback_id and not _FEEDBACK_ID.fullmatch(feedback_id):
        raise InvalidArgument(
            "feedback_id is invalid: use 1-128 characters of A-Z a-z 0-9 . _ : -"
        )
    if kind == "thumbs":
        if len(response_ids) != 1 or not response_ids[0]:
            raise InvalidArgument("thumbs.response_id is required")
    elif kind == "ranking":
        if len(response_ids) < 2:
            raise InvalidArgument("ranking.response_ids needs at least 2 responses, best first")
        if len(response_ids) > MAX_RANKING:
            raise InvalidArgument(f"ranking.response_ids has more than {MAX_RANKING} responses")
        if len(set(response_ids)) != len(response_ids):
            raise InvalidArgument("ranking.response_ids contains the same response twice")
    else:
        raise InvalidArgument("feedback must carry either thumbs or ranking")
    return FeedbackParams(user_id, labeler, feedback_id, kind, tuple(response_ids), up)
