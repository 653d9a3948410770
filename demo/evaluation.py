"""What the demo measures, as pure functions over answers fetched through the API.

- ``compare``: a user's served adapter vs the base model on held-out prompts (same
  prompt, same seed) under a preference: a ``Tally`` of wins, ties and losses.
- ``leakage``: the same answers under every library preference *independent* of the
  user's: the adapter should leave those scores where the base model had them. A
  shift is reported signed, in points of win rate away from 50%, with an interval
  Bonferroni-adjusted for the number of preferences looked at.
- ``IdentityLedger``: another user's answers for a fixed prompt and seed, probed
  before and after a user's new version is served, must stay byte-identical.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from demo.preferences import Preference, independent_of, win
from demo.stats import Tally, shift_points

Answers = Mapping[tuple[str, int], str]
"""Answer text by (prompt, sample number); the sample number fixes the seed."""

LEAKAGE_LIMIT_POINTS = 5.0


def compare(preference: Preference, answers: Answers, base: Answers) -> Tally:
    """``answers`` vs ``base`` under ``preference``, on the keys both have."""
    tally = Tally()
    for key in base.keys() & answers.keys():
        tally = tally.add(win(preference, key[0], answers[key], base[key]))
    return tally


@dataclass(frozen=True)
class Leak:
    """The adapter's win rate vs base under a preference the user does not hold."""

    preference: str
    tally: Tally
    confidence: float

    @property
    def points(self) -> float:
        return shift_points(self.tally, self.confidence)[0]

    def interval_points(self) -> tuple[float, float]:
        _, lo, hi = shift_points(self.tally, self.confidence)
        return lo, hi

    def leaks(self, limit: float = LEAKAGE_LIMIT_POINTS) -> bool:
        """A shift beyond ``limit`` points whose interval excludes no shift at all."""
        lo, hi = self.interval_points()
        return abs(self.points) > limit and (lo > 0 or hi < 0)

    def as_dict(self) -> dict[str, object]:
        lo, hi = self.interval_points()
        return {"preference": self.preference, "points": self.points, "lo": lo, "hi": hi,
                "confidence": self.confidence, "n": self.tally.n, "leaks": self.leaks()}


def leakage(preference: Preference, answers: Answers, base: Answers,
            confidence: float = 0.95) -> list[Leak]:
    """One ``Leak`` per library preference independent of ``preference``."""
    others = independent_of(preference)
    adjusted = 1 - (1 - confidence) / max(1, len(others))  # Bonferroni
    return [Leak(p.name, compare(p, answers, base), adjusted) for p in others]


def worst(leaks: list[Leak]) -> Leak | None:
    """The largest shift in either direction."""
    return max(leaks, key=lambda lk: abs(lk.points), default=None)


@dataclass(frozen=True)
class Probe:
    """A user's answers to the fixed probe prompt and seed, and the version served."""

    version: str
    texts: tuple[str, ...]


Outcome = Literal["first", "identical", "mismatch", "skipped"]


@dataclass
class IdentityLedger:
    """Byte-identity of one user's probe answers while other users' adapters change."""

    reference: Probe | None = None
    checks: int = 0
    mismatches: int = 0
    skipped: int = 0
    """Probes not compared because the user's own served version had changed."""

    def observe(self, probe: Probe) -> Outcome:
        ref, self.reference = self.reference, probe
        if ref is None:
            return "first"
        if ref.version != probe.version:
            self.skipped += 1
            return "skipped"
        self.checks += 1
        if ref.texts != probe.texts:
            self.mismatches += 1
            return "mismatch"
        return "identical"

    def as_dict(self) -> dict[str, int]:
        return {"checks": self.checks, "mismatches": self.mismatches, "skipped": self.skipped}
