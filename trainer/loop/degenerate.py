"""Degenerate outputs the publish gate refuses, measured on a batch of completions (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def repeated_ngram_share(text: str, n: int) -> float:
    """Share of the word n-grams of ``text`` that repeat an earlier one (0 when it has
    fewer than two n-grams): "the the the the" -> high, ordinary prose -> about 0."""
    words = text.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if len(grams) < 2:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


@dataclass(frozen=True)
class OutputHealth:
    """Shares of a batch of completions that look broken."""

    empty: float
    """Completions with no visible text."""
    truncated: float
    """Completions cut at the token limit (no end-of-sequence token)."""
    repetitive: float
    """Completions whose repeated n-gram share is above the configured bound."""


def output_health(completions: Sequence[str], ended: Sequence[bool], ngram: int,
                  max_repeated_share: float) -> OutputHealth:
    n = max(len(completions), 1)
    return OutputHealth(
        empty=sum(not c.strip() for c in completions) / n,
        truncated=sum(not e for e in ended) / n,
        repetitive=sum(repeated_ngram_share(c, ngram) > max_repeated_share
                       for c in completions) / n)
