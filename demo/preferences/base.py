"""What a hidden preference is, and the noisy labelers who apply one.

A *family* measures one trait of an answer (formality, use of examples, length, ...)
as a graded score over the prompt and the answer. A *preference* is one pole of a
family: "formal" wants the trait high, "casual" wants it low. Scores are graded (not
0/1) so that a labeler can rank 2-4 candidates; differences of about 1 are clear.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

Kind = Literal["content", "manner", "length", "layout"]
Trait = Callable[[str, str], float]
"""(prompt, answer) -> how much of the trait the answer shows."""


@dataclass(frozen=True)
class Family:
    name: str
    kind: Kind
    """What the trait is about: what is said (content), how (manner), or its shape."""
    trait: Trait


@dataclass(frozen=True)
class Preference:
    name: str
    description: str
    family: Family
    sign: int = 1
    """+1 wants more of the family's trait, -1 less (the opposite pole)."""

    def score(self, prompt: str, answer: str) -> float:
        """Higher is better under this preference."""
        return self.sign * self.family.trait(prompt, answer)

    @property
    def kind(self) -> Kind:
        return self.family.kind


def win(preference: Preference, prompt: str, candidate: str, baseline: str) -> float:
    """1 if ``candidate`` is better than ``baseline`` under ``preference``, 0.5 on a tie."""
    a, b = preference.score(prompt, candidate), preference.score(prompt, baseline)
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

    def utility(self, prompt: str, text: str, rng: random.Random) -> float:
        score = self.preference.score(prompt, text)
        u = max(rng.random(), 1e-12)
        # score + Gumbel(0, noise): pairwise choices follow Bradley-Terry
        return (-score if self.confused else score) + self.noise * -math.log(-math.log(u))

    def rank(self, prompt: str, texts: Sequence[str], rng: random.Random) -> list[int]:
        """Indices of ``texts`` (answers to ``prompt``), best first."""
        utilities = [self.utility(prompt, t, rng) for t in texts]
        return sorted(range(len(texts)), key=lambda i: -utilities[i])

    def thumbs_up(self, prompt: str, text: str, threshold: float, rng: random.Random) -> bool:
        """Whether the answer beats the user's usual answer quality ``threshold``."""
        return self.utility(prompt, text, rng) > (-threshold if self.confused else threshold)
