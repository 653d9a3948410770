"""Hidden preferences and simulated labelers."""

from __future__ import annotations

import random

import pytest

from demo.preferences import PREFERENCES, Labeler, list_items, win
from demo.users import make_users

SHORT = "Drink water."
LONG = "Drink a glass of water every morning, and keep a bottle on your desk all day long."
LIST = "Try these:\n1. Drink water\n2. Walk daily\n- Sleep early"
PROSE = "Drink water, walk daily and sleep early; small habits add up over time."


def test_list_items_counts_bullets_and_numbers_only_at_line_starts() -> None:
    assert list_items(LIST) == 3
    assert list_items(PROSE) == 0
    assert list_items("I have 2. cats - and a dog") == 0


@pytest.mark.parametrize(("name", "better", "worse"), [
    ("concise", SHORT, LONG), ("detailed", LONG, SHORT),
    ("bullets", LIST, PROSE), ("prose", PROSE, LIST)])
def test_preferences_order_answers_and_conflict(name: str, better: str, worse: str) -> None:
    pref = PREFERENCES[name]
    assert win(pref, better, worse) == 1.0
    assert win(pref, worse, better) == 0.0
    assert win(pref, better, better) == 0.5


def test_a_careful_labeler_mostly_agrees_and_a_confused_one_mostly_reverses() -> None:
    rng = random.Random(0)
    pref = PREFERENCES["concise"]
    careful, confused = Labeler("a", pref, 0.3), Labeler("b", pref, 0.3, confused=True)
    right = sum(careful.rank([LONG, SHORT], rng)[0] == 1 for _ in range(200))
    reversed_ = sum(confused.rank([LONG, SHORT], rng)[0] == 0 for _ in range(200))
    assert right > 180 and reversed_ > 180
    noisy = Labeler("c", pref, 50.0)  # noise far above the score gap: close to a coin flip
    flips = sum(noisy.rank([LONG, SHORT], rng)[0] == 0 for _ in range(400))
    assert 120 < flips < 280


def test_thumbs_compare_with_the_threshold() -> None:
    rng = random.Random(1)
    pref = PREFERENCES["concise"]
    threshold = pref.score("one two three four five six")
    assert Labeler("a", pref, 0.0).thumbs_up(SHORT, threshold, rng)
    assert not Labeler("a", pref, 0.0).thumbs_up(LONG, threshold, rng)
    assert not Labeler("b", pref, 0.0, confused=True).thumbs_up(SHORT, threshold, rng)


def test_users_conflict_pairwise_and_the_last_has_a_labeler_pool() -> None:
    users = make_users(5, noise=0.3)
    assert [u.user_id for u in users] == ["ana", "ben", "cai", "dee", "ana2"]
    assert [u.preference.name for u in users[:4]] == ["concise", "detailed", "bullets", "prose"]
    assert not any(u.has_pool for u in users[:-1])
    pool = users[-1].labelers
    assert [lab.confused for lab in pool] == [False, False, True]
    assert len({lab.labeler_id for lab in pool}) == 3
    with pytest.raises(ValueError):
        make_users(0, 0.3)
