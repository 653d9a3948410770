"""Win rates and their Wilson intervals."""

from __future__ import annotations

import pytest
from scipy.stats import binomtest

from demo.stats import Tally, agree, difference, fmt_rate, shift_points, wilson


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (24, 48), (40, 48), (48, 48), (1, 1)])
def test_wilson_matches_scipy(k: int, n: int) -> None:
    ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
    assert wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_wilson_narrows_with_more_comparisons_and_knows_nothing_of_none() -> None:
    lo10, hi10 = wilson(8, 10)
    lo100, hi100 = wilson(80, 100)
    assert lo10 < lo100 < 0.8 < hi100 < hi10
    assert wilson(0, 0) == (0.0, 1.0)
    assert wilson(45, 48, confidence=0.99)[0] < wilson(45, 48)[0]


def test_a_tally_counts_ties_as_half_and_says_when_it_differs_from_chance() -> None:
    t = Tally()
    for outcome in [1.0] * 30 + [0.5] * 10 + [0.0] * 8:
        t = t.add(outcome)
    assert (t.wins, t.ties, t.losses, t.n) == (30, 10, 8, 48)
    assert t.rate == pytest.approx(35 / 48)
    assert t.excludes_half() and t.interval()[0] > 0.5
    even = Tally(wins=20, ties=8, losses=20)
    assert even.rate == 0.5 and not even.excludes_half()
    assert Tally().rate == 0.5 and not Tally().excludes_half()
    assert Tally(losses=40, wins=8).excludes_half()  # worse than base is a difference too
    shift, lo, hi = shift_points(t)
    assert shift == pytest.approx(100 * (35 / 48 - 0.5)) and lo < shift < hi
    assert fmt_rate(t).endswith("n=48") and fmt_rate(Tally()) == "-"
    assert t.as_dict()["n"] == 48


def test_the_difference_interval_is_newcombes() -> None:
    # Newcombe (1998), Statistics in Medicine 17:873-890, table II, example (a):
    # 56/70 vs 48/80, method 10 gives 0.0524 to 0.3339
    d, lo, hi = difference(Tally(wins=56, losses=14), Tally(wins=48, losses=32))
    assert d == pytest.approx(0.2)
    assert (lo, hi) == pytest.approx((0.0524, 0.3339), abs=5e-5)


def test_two_measures_agree_when_their_difference_may_be_zero() -> None:
    assert agree(Tally(wins=30, losses=18), Tally(wins=20, losses=12)) is True
    assert agree(Tally(wins=45, losses=3), Tally(wins=10, losses=30)) is False
    assert agree(Tally(wins=45, losses=3), Tally()) is None  # nothing measured online yet
