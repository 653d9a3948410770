"""bench.reward_replay's relabelled users: the recorded answers ordered anew by another
preference, one noisy utility per answer, so that a ranking's pairs stay one order."""

from __future__ import annotations

import pytest

from bench.reward_replay import relabelled, with_relabelled
from demo.preferences import PREFERENCES
from trainer.reward.data import PairExample

PROMPT = "user: is coffee bad for sleep?"
HEDGE, FLAT, MID = ("It might, it usually depends on the dose.", "Coffee keeps you awake.",
                    "Perhaps, for some people.")


def ranking(user: str) -> list[PairExample]:
    """Every pair of one ranking of three answers, in the recorded user's order."""
    return [PairExample(user, PROMPT, FLAT, HEDGE), PairExample(user, PROMPT, FLAT, MID),
            PairExample(user, PROMPT, MID, HEDGE)]


def test_a_noise_free_labeler_orders_every_pair_by_the_preference() -> None:
    confident, hedged = PREFERENCES["confident"], PREFERENCES["hedged"]
    pairs = relabelled(hedged, "h@u", ranking("u"), noise=0.0, seed=0)
    assert all(p.user_id == "h@u" for p in pairs)
    assert all(hedged.score("", p.chosen) >= hedged.score("", p.rejected) for p in pairs)
    assert [(p.chosen, p.rejected) for p in relabelled(confident, "c@u", ranking("u"), 0.0,
                                                         0)] == [(FLAT, HEDGE), (FLAT, MID),
                                                                 (MID, HEDGE)]


@pytest.mark.parametrize("seed", range(20))
def test_noisy_labels_are_one_consistent_order_and_reproducible(seed: int) -> None:
    """Large noise flips pairs, never into a cycle: each answer has one utility."""
    pairs = relabelled(PREFERENCES["hedged"], "h@u", ranking("u"), noise=5.0, seed=seed)
    wins = {text: sum(p.chosen == text for p in pairs) for text in (HEDGE, FLAT, MID)}
    assert sorted(wins.values()) == [0, 1, 2]
    assert pairs == relabelled(PREFERENCES["hedged"], "h@u", ranking("u"), 5.0, seed)


def test_relabelled_users_take_the_recorded_users_answers_in_turn() -> None:
    data = {"a": ranking("a"), "b": ranking("b")[:1]}
    prefs = {"a": PREFERENCES["formal"], "b": PREFERENCES["casual"]}
    more, more_prefs = with_relabelled(data, prefs, ["hedged", "confident", "warm"], 0.2, 0)
    assert list(more) == ["a", "b", "hedged@a", "confident@b", "warm@a"]
    assert [len(more[u]) for u in more] == [3, 1, 3, 1, 3]
    assert more_prefs["confident@b"] is PREFERENCES["confident"]
    assert more["a"] is data["a"] and list(data) == ["a", "b"]  # the recorded users as given
