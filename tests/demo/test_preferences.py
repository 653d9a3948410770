"""Hidden preferences and simulated labelers."""

from __future__ import annotations

import random

import pytest

from demo.preferences import PREFERENCES, Labeler, list_items, win
from demo.users import CONTENT_CAST, cast_for, make_users

SHORT = "Drink water."
LONG = "Drink a glass of water every morning, and keep a bottle on your desk all day long."
LIST = "Try these:\n1. Drink water\n2. Walk daily\n- Sleep early"
PROMPT = "How do I stay healthy?"
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
    assert win(pref, PROMPT, better, worse) == 1.0
    assert win(pref, PROMPT, worse, better) == 0.0
    assert win(pref, PROMPT, better, better) == 0.5


def test_a_careful_labeler_mostly_agrees_and_a_confused_one_mostly_reverses() -> None:
    rng = random.Random(0)
    pref = PREFERENCES["concise"]
    careful, confused = Labeler("a", pref, 0.3), Labeler("b", pref, 0.3, confused=True)
    right = sum(careful.rank(PROMPT, [LONG, SHORT], rng)[0] == 1 for _ in range(200))
    reversed_ = sum(confused.rank(PROMPT, [LONG, SHORT], rng)[0] == 0 for _ in range(200))
    assert right > 180 and reversed_ > 180
    noisy = Labeler("c", pref, 50.0)  # noise far above the score gap: close to a coin flip
    flips = sum(noisy.rank(PROMPT, [LONG, SHORT], rng)[0] == 0 for _ in range(400))
    assert 120 < flips < 280


def test_thumbs_compare_with_the_threshold() -> None:
    rng = random.Random(1)
    pref = PREFERENCES["concise"]
    threshold = pref.score(PROMPT, "one two three four five six")
    assert Labeler("a", pref, 0.0).thumbs_up(PROMPT, SHORT, threshold, rng)
    assert not Labeler("a", pref, 0.0).thumbs_up(PROMPT, LONG, threshold, rng)
    assert not Labeler("b", pref, 0.0, confused=True).thumbs_up(PROMPT, SHORT, threshold, rng)


def test_fewer_than_four_users_play_length_and_layout() -> None:
    users = make_users(3, noise=0.3)
    assert [u.user_id for u in users] == ["ana", "ben", "cai"]
    assert [u.preference.name for u in users] == ["concise", "detailed", "bullets"]
    assert [u.preference.name for u in make_users(2, 0.3)] == ["concise", "detailed"]


def test_four_users_or_more_play_content_families_with_a_labeler_pool_last() -> None:
    users = make_users(4, noise=0.3, prefix="x-")
    assert [u.user_id for u in users] == ["x-fay", "x-cas", "x-eli", "x-wren"]
    assert [u.preference.name for u in users] == ["formal", "casual", "examples", "warm"]
    assert all(u.preference.kind in ("content", "manner") for u in users)
    assert not any(u.has_pool for u in users[:-1])
    pool = users[-1].labelers
    assert [lab.confused for lab in pool] == [False, False, True]
    assert len({lab.labeler_id for lab in pool}) == 3
    # nine users cover eight families; past the cast, names repeat with a number
    assert len({u.preference.family.name for u in make_users(9, 0.3)}) == 8
    assert cast_for(len(CONTENT_CAST) + 1)[-1] == ("fay2", "formal")
    with pytest.raises(ValueError):
        make_users(0, 0.3)


def test_chosen_preferences_cycle_and_unknown_ones_are_refused() -> None:
    users = make_users(3, 0.3, preferences=["second_person", "warm"])
    assert [u.user_id for u in users] == ["second-person", "warm", "second-person2"]
    with pytest.raises(ValueError, match="unknown preferences"):
        make_users(2, 0.3, preferences=["telepathic"])
