"""Kafka record formats: UTF-8 JSON objects with a ``schema_version``.

Documented in docs/records.md; any Kafka client can read them. Keys are the
UTF-8 user id, so all of a user's records land in one partition.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass, field
from typing import Any, TypeVar

SCHEMA_VERSION = 1
T = TypeVar("T", bound="Record")
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
"""What ``json.dumps(body, separators=(",", ":"), ensure_ascii=False)`` builds on every
call (the same output), made once."""


class RecordError(ValueError):
    """A record that cannot be parsed (it goes to the dead-letter topic)."""


def json_object(raw: str | bytes, error: type[ValueError]) -> dict[str, Any]:
    """``raw`` parsed as a JSON object; ``error`` (with the reason) for anything else."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise error("not a JSON object")
    return body


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


@dataclass(frozen=True)
class Record:
    """Base: (de)serialisation shared by every record type."""

    TYPE = ""

    def to_json(self) -> bytes:
        # fields read directly (records hold only JSON values; ``dataclasses.asdict``'s
        # deep copy was the largest cost of a SubmitFeedback call)
        body = {"schema_version": SCHEMA_VERSION, "type": self.TYPE,
                **{name: getattr(self, name) for name in _field_names(type(self))}}
        return _ENCODER.encode(body).encode()

    @classmethod
    def from_json(cls: type[T], raw: bytes) -> T:
        return cls.from_body(json_object(raw, RecordError))

    @classmethod
    def from_body(cls: type[T], body: dict[str, Any]) -> T:
        """The record from its parsed JSON object (``from_json`` without the parse)."""
        if body.get("schema_version") != SCHEMA_VERSION:
            raise RecordError(f"unsupported schema_version {body.get('schema_version')!r}")
        if body.get("type") != cls.TYPE:
            raise RecordError(f"expected type {cls.TYPE!r}, got {body.get('type')!r}")
        names = _field_names(cls)
        try:
            return cls(**{k: v for k, v in body.items() if k in names})
        except TypeError as exc:
            raise RecordError(f"missing or bad fields: {exc}") from exc


@dataclass(frozen=True)
class GenerationRecord(Record):
    """One served completion (topic ``generations``)."""

    TYPE = "generation"
    response_id: str
    group_id: str
    user_id: str
    candidate_index: int
    num_candidates: int
    messages: list[dict[str, str]]
    prompt_token_ids: list[int]
    completion: str
    completion_token_ids: list[int]
    finish_reason: str
    adapter_version: str
    base_model: str
    sampling: dict[str, Any]
    created_at: float
    replica: str = ""
    arm: str = "served"
    """Which model produced the completion: ``served`` (``adapter_version``, the user's
    adapter, or the base model when that is empty), or a comparison arm drawn in its
    place for online evaluation: ``base`` (the base model) or ``parent`` (the adapter
    ``arm_version``). Records written before the field existed read as ``served``."""
    arm_version: str = ""
    """The adapter version of a ``parent`` arm; empty otherwise."""


ARMS = ("served", "base", "parent")
"""The values of ``GenerationRecord.arm``."""


@dataclass(frozen=True)
class FeedbackRecord(Record):
    """One thumbs rating or ranking (topic ``feedback``).

    ``response_ids`` holds the one rated response for thumbs, or the ranked
    responses best first; all belong to ``group_id``.
    """

    TYPE = "feedback"
    feedback_id: str
    user_id: str
    labeler_id: str
    kind: str
    response_ids: list[str]
    group_id: str
    created_at: float
    up: bool | None = None


@dataclass(frozen=True)
class ErasureRecord(Record):
    """A user's data is erased (topic ``feedback``, keyed by the user like the user's
    feedback, so it is ordered after every feedback record it erases).

    The tombstone a trainer honours whenever it reads the topic, also when it rebuilds
    its journal from the beginning: it drops the user's feedback before it, the user's
    generations created up to ``erased_at``, and every per-user parameter it holds."""

    TYPE = "erasure"
    erasure_id: str
    user_id: str
    erased_at: float
    """Unix seconds (the server's clock) of the erasure."""
    requested_by: str
    """"admin" (an operator's token), "self" (the user's own token) or "open" (auth off)."""


def parse_feedback_topic(raw: bytes) -> FeedbackRecord | ErasureRecord:
    """A record of the ``feedback`` topic: feedback or a user's erasure (by ``type``)."""
    body = json_object(raw, RecordError)
    kind = ErasureRecord if body.get("type") == ErasureRecord.TYPE else FeedbackRecord
    return kind.from_body(body)


@dataclass(frozen=True)
class AdapterUpdateRecord(Record):
    """A newly published adapter version (topic ``adapter-updates``).

    The server finds the files at ``<store>/<user_id>/<version>/``; records
    never carry a path.
    """

    TYPE = "adapter_update"
    user_id: str
    version: str
    sha256: str
    base_model: str
    created_at: float
    metrics: dict[str, Any] = field(default_factory=dict)
    control: bool = False
    """An operator changed the user's control state (pin, unpin, reset, erase): every
    replica re-reads ``<store>/<user_id>/control.json`` and serves what it says."""


@dataclass(frozen=True)
class DeadLetterRecord(Record):
    """A record that could not be processed, with the reason (topics ``*-dlq``)."""

    TYPE = "dead_letter"
    source_topic: str
    partition: int
    offset: int
    reason: str
    key: str | None
    value: str
    created_at: float
