"""Win rates with their confidence intervals.

A comparison of an adapter's answer with the base model's answer (same prompt, same
seed) is a win, a tie or a loss. The win rate counts a tie as half a win; its
interval is Wilson's score interval on that rate over the number of comparisons
(ties make the true spread smaller, so the interval errs wide).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.stats import norm


def wilson(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n``; (0, 1) when ``n`` is 0."""
    if n <= 0:
        return 0.0, 1.0
    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Tally:
    """Outcomes of ``n`` paired comparisons."""

    wins: int = 0
    ties: int = 0
    losses: int = 0

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses

    @property
    def rate(self) -> float:
        """Win rate, a tie counting half; 0.5 (no difference) before any comparison."""
        return (self.wins + self.ties / 2) / self.n if self.n else 0.5

    def interval(self, confidence: float = 0.95) -> tuple[float, float]:
        return wilson(self.wins + self.ties / 2, self.n, confidence)

    def excludes_half(self, confidence: float = 0.95) -> bool:
        """Whether the interval excludes 50% (a real difference from the base model)."""
        lo, hi = self.interval(confidence)
        return lo > 0.5 or hi < 0.5

    def add(self, outcome: float) -> Tally:
        """With one more comparison: 1 a win, 0.5 a tie, 0 a loss."""
        return Tally(self.wins + (outcome == 1.0), self.ties + (outcome == 0.5),
                     self.losses + (outcome == 0.0))

    def as_dict(self, confidence: float = 0.95) -> dict[str, float | int]:
        lo, hi = self.interval(confidence)
        return {"rate": self.rate, "lo": lo, "hi": hi, "n": self.n, "wins": self.wins,
                "ties": self.ties, "losses": self.losses}


def difference(a: Tally, b: Tally, confidence: float = 0.95) -> tuple[float, float, float]:
    """``a.rate - b.rate`` with its interval by Newcombe's hybrid score method (his
    method 10: from the two Wilson intervals), as (difference, lo, hi)."""
    (la, ua), (lb, ub) = a.interval(confidence), b.interval(confidence)
    d = a.rate - b.rate
    return (d, d - math.sqrt((a.rate - la) ** 2 + (ub - b.rate) ** 2),
            d + math.sqrt((ua - a.rate) ** 2 + (b.rate - lb) ** 2))


def agree(a: Tally, b: Tally, confidence: float = 0.95) -> bool | None:
    """Whether two measures of one win rate agree: the interval of their difference holds
    0. None while either has no comparison."""
    if not (a.n and b.n):
        return None
    _, lo, hi = difference(a, b, confidence)
    return lo <= 0.0 <= hi


def shift_points(tally: Tally, confidence: float = 0.95) -> tuple[float, float, float]:
    """The win rate's distance from 50% in points, with its interval: (shift, lo, hi)."""
    lo, hi = tally.interval(confidence)
    return 100 * (tally.rate - 0.5), 100 * (lo - 0.5), 100 * (hi - 0.5)


def fmt_rate(tally: Tally) -> str:
    """``67% [52-79%] n=48``; ``-`` before any comparison."""
    if not tally.n:
        return "-"
    lo, hi = tally.interval()
    return f"{tally.rate:.0%} [{lo:.0%}-{hi:.0%}] n={tally.n}"
