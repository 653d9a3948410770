"""Hidden preferences of simulated users, and the noisy labelers who apply them.

A preference is a score over an answer's text; higher is better. The pairs below
conflict on purpose (concise vs detailed, list vs prose), so one shared model
cannot please both sides and only personal reward models and adapters can.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

_LIST_ITEM = re.compile(r"(?m)^\s*(?:[-*•]|\d{1,2}[.)])\s+\S")


def words(text: str) -> int:
    return len(text.split())


def list_items(text: str) -> int:
    """Lines that start like a bulleted or numbered list item."""
    return len(_LIST_ITEM.findall(text))


@dataclass(frozen=True)
class Preference:
    name: str
    description: str
    score: Callable[[str], float]
    """Higher is better; differences of about 1 are clear to a labeler."""


PREFERENCES: dict[str, Preference] = {p.name: p for p in (
    Preference("concise", "short answers, the fewer words the better",
               lambda t: -words(t) / 10),
    Preference("detailed", "long, detailed answers",
               lambda t: words(t) / 10),
    Preference("bullets", "answers laid out as a bulleted or numbered list",
               lambda t: min(list_items(t), 4) - 0.02 * words(t) / 10),
    Preference("prose", "plain prose, no lists",
               lambda t: -min(list_items(t), 4) + 0.02 * words(t) / 10),
)}


def win(preference: Preference, candidate: str, baseline: str) -> float:
    """1 if ``candidate`` is better than ``baseline`` under ``preference``, 0.5 on a tie."""
    a, b = preference.score(candidate), preference.score(baseline)
    return 1.0 if a > b + 1e-9 else 0.0 if b > a + 1e-9 else 0.5


@dataclass(frozen=True)
class Labeler:
    """Applies a preference with Bradley-Terry noise; a confused labeler applies its
    opposite (it misread the instructions)."""

    labeler_id: str
    preference: Preference
    noise: float = 0.3
    """Scale of the Gumbel noise added to each score (0 = a perfect labeler)."""
    confused: bool = False

    def utility(self, text: str, rng: random.Random) -> float:
        score = -self.preference.score(text) if self.confused else self.preference.score(text)
        u = max(rng.random(), 1e-12)
        return score + self.noise * -math.log(-math.log(u))  # score + Gumbel(0, noise)

    def rank(self, texts: Sequence[str], rng: random.Random) -> list[int]:
        """Indices of ``texts``, best first."""
        utilities = [self.utility(t, rng) for t in texts]
        return sorted(range(len(texts)), key=lambda i: -utilities[i])

    def thumbs_up(self, text: str, threshold: float, rng: random.Random) -> bool:
        """Whether the answer beats the user's usual answer quality ``threshold``."""
        return self.utility(text, rng) > (-threshold if self.confused else threshold)
