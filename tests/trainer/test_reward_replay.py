"""bench.reward_replay.cross_validate on a small synthetic run: every decided pair is
judged once, in the fold that held its prompt out; settings that differ only in pooling
get encoders of their own; and the reward model learns a length preference from the
replayed rankings of both poles."""

from __future__ import annotations

import pytest

from bench.reward_model import decided, rankings
from bench.reward_replay import cross_validate, question
from demo.preferences import PREFERENCES
from trainer.reward.data import PairExample
from trainer.reward.encoder import TextEncoder

USERS = {"u-concise": PREFERENCES["concise"], "u-detailed": PREFERENCES["detailed"]}


@pytest.fixture(scope="module")
def data() -> dict[str, list[PairExample]]:
    """16 rankings of 4 composed answers per user, ordered by the user's preference
    without noise: up to 6 pairs a ranking, preferred first."""
    return {u: rankings(u, pref, 16, 4, 0.0, seed)
            for seed, (u, pref) in enumerate(USERS.items())}


def test_every_decided_pair_is_judged_once_and_length_is_learnt(
        data: dict[str, list[PairExample]]) -> None:
    encoders: dict[str, TextEncoder] = {}
    right = cross_validate("0:all", data, USERS, 4, encoders)
    for user, pref in USERS.items():
        assert len(right[user]) == len(decided(pref, data[user], question))
        assert sum(right[user]) / len(right[user]) >= 0.85, user
    cls = cross_validate("0:all:pool-cls", data, USERS, 4, encoders)
    assert len(encoders) == 2, "settings differing in pooling shared one encoder"
    assert {u: len(v) for u, v in cls.items()} == {u: len(v) for u, v in right.items()}


def test_a_tuned_encoder_is_refused(data: dict[str, list[PairExample]]) -> None:
    with pytest.raises(SystemExit, match="frozen encoder"):
        cross_validate("1:all", data, USERS, 2, {})
