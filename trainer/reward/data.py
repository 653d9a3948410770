"""Reward-model training examples and their deterministic held-out split.

The two kinds of feedback the trainer derives from Kafka (see ``docs``):
a ranking gives ``PairExample``s (preferred completion first), a thumbs
up/down gives a ``ThumbExample``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["Example", "PairExample", "ThumbExample", "fold_of", "heldout_prompts",
           "is_heldout_prompt", "split_heldout", "stable_hash"]


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


def split_heldout(examples: Sequence[E], fraction: float, seed: int) -> tuple[list[E], list[E]]:
    """Split ``examples`` into ``(train, heldout)`` by prompt, deterministically per user.

    A user's prompt is held out by ``heldout_prompts``: when the hash of (seed, user_id,
    prompt) falls in the lowest ``fraction`` of the hash range. So every pair of one
    ranking (and every thumbs on one prompt) lands on the same side: a held-out A > C
    never shares a text with a training pair A > B. The decision depends on nothing but
    the user's prompts, so every process computes the same split, and as the data grows
    no training example ever becomes held out. The held-out share of prompts is
    ``fraction`` in expectation, not exactly.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"heldout fraction must be in [0, 1), got {fraction}")
    prompts: dict[str, list[str]] = {}
    for example in examples:
        prompts.setdefault(example.user_id, []).append(example.prompt)
    held = {user: heldout_prompts(user, ps, fraction, seed) for user, ps in prompts.items()}
    train: list[E] = []
    heldout: list[E] = []
    for example in examples:
        (heldout if example.prompt in held[example.user_id] else train).append(example)
    return train, heldout


def heldout_prompts(user_id: str, prompts: Iterable[str], fraction: float,
                    seed: int) -> set[str]:
    """The user's prompts held out of training: the reward model never trains on their
    examples, PPO never samples them, and the publish gate compares adapters on them.

    A prompt is held out when its hash is in the lowest ``fraction`` of the range. A user
    with two prompts or more of which none is, has the one with the lowest hash held out,
    so that every user can be evaluated; once a prompt below the threshold arrives, that
    one returns to training (data only ever moves from held out to training)."""
    distinct = set(prompts)
    held = {p for p in distinct if is_heldout_prompt(user_id, p, fraction, seed)}
    if not held and len(distinct) >= 2 and fraction > 0:
        held = {min(distinct, key=lambda p: stable_hash(str(seed), user_id, p))}
    return held


def is_heldout_prompt(user_id: str, prompt: str, fraction: float, seed: int) -> bool:
    """Whether the prompt's hash puts it in the held-out share (see ``heldout_prompts``)."""
    return stable_hash(str(seed), user_id, prompt) < int(fraction * 2**64)


def fold_of(example: Example, seed: int) -> int:
    """0 or 1: which half of the user's training prompts the example belongs to (by
    prompt). The judge head trains on fold 1; the policy head on both folds, or on fold 0
    only (``RewardModelConfig.policy_head_data``)."""
    return stable_hash(str(seed), "fold", example.user_id, example.prompt) & 1
