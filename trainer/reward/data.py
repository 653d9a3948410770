"""Reward-model training examples and their deterministic held-out split.

The two kinds of feedback the trainer derives from Kafka (see ``docs``):
a ranking gives ``PairExample``s (preferred completion first), a thumbs
up/down gives a ``ThumbExample``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["Example", "PairExample", "ThumbExample", "split_heldout", "stable_hash"]


@dataclass(frozen=True)
class PairExample:
    """One preference: ``user_id`` preferred ``chosen`` over ``rejected`` for ``prompt``."""

    user_id: str
    prompt: str
    chosen: str
    rejected: str
    weight: float = 1.0
    """Loss weight (e.g. a labeler's agreement score)."""


@dataclass(frozen=True)
class ThumbExample:
    """One thumbs rating of a single completion: ``label`` 1.0 = up, 0.0 = down."""

    user_id: str
    prompt: str
    completion: str
    label: float
    weight: float = 1.0
    """Loss weight (e.g. a labeler's agreement score)."""


Example = PairExample | ThumbExample
E = TypeVar("E", PairExample, ThumbExample)


def stable_hash(*parts: str) -> int:
    """A 64-bit hash of ``parts`` that is the same in every process (unlike ``hash``)."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _content_key(example: Example) -> tuple[str, ...]:
    """The fields that identify an example (its weight excluded)."""
    if isinstance(example, PairExample):
        return ("pair", example.prompt, example.chosen, example.rejected)
    return ("thumb", example.prompt, example.completion, repr(float(example.label)))


def split_heldout(examples: Sequence[E], fraction: float, seed: int) -> tuple[list[E], list[E]]:
    """Split ``examples`` into ``(train, heldout)``, deterministically per user.

    An example is held out when the hash of (seed, its user_id, its content) falls in the
    lowest ``fraction`` of the hash range. The decision depends on nothing else, so it stays
    the same as a user's data set grows (no example moves from training into the held-out
    set), duplicates land on the same side, and every process computes the same split. The
    held-out share is ``fraction`` in expectation, not exactly.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"heldout fraction must be in [0, 1), got {fraction}")
    threshold = int(fraction * 2**64)
    train: list[E] = []
    heldout: list[E] = []
    for example in examples:
        h = stable_hash(str(seed), example.user_id, *_content_key(example))
        (heldout if h < threshold else train).append(example)
    return train, heldout
