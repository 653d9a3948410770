"""Surface features of a completion: its length and layout, as the reward heads see them.

A frozen sentence encoder with mean pooling and L2 normalisation keeps what a text is
about and loses most of how long it is and how it is laid out, yet preferences are
often about exactly that: short or detailed answers, lists or prose. Length is also
the best-known bias of learned rewards (Singhal et al. 2023, "A Long Way to Go:
Investigating Length Correlations in RLHF"), so the heads see it explicitly, where a
user's head can weigh it up or down, rather than through whatever of it survives
pooling. Each feature is log(1 + count), so a few words more matter less on a long
answer than on a short one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

SURFACE_FEATURES: tuple[str, ...] = ("log_words", "log_chars", "log_lines")
"""Names of the columns ``surface_features`` returns, in order."""


def surface_features(completions: Sequence[str], device: torch.device | str = "cpu") -> Tensor:
    """(B, len(SURFACE_FEATURES)): log(1 + words), log(1 + characters), log(1 + lines)."""
    rows = [[math.log1p(len(text.split())), math.log1p(len(text)),
             math.log1p(len([line for line in text.splitlines() if line.strip()]))]
            for text in completions]
    return torch.tensor(rows, dtype=torch.float32, device=device).reshape(
        len(completions), len(SURFACE_FEATURES))
