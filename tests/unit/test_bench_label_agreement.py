"""bench.reward_replay's label agreement: of the recorded pairs a preference decides, the
share the user's (noisy) choices ordered its way; ties are not counted."""

from __future__ import annotations

from bench.reward_replay import label_agreement
from demo.preferences import PREFERENCES
from trainer.reward.data import PairExample


def test_agreeing_flipped_and_tied_pairs() -> None:
    hedged = PREFERENCES["hedged"]
    prompt = "user: is coffee bad for sleep?"
    hedge, flat = "It might, it usually depends on the dose.", "Coffee keeps you awake."
    assert hedged.score("", hedge) > hedged.score("", flat)
    pairs = [PairExample("u", prompt, hedge, flat),          # the preference's way
             PairExample("u", prompt, hedge, flat),
             PairExample("u", prompt, flat, hedge),          # against it (label noise)
             PairExample("u", prompt, flat, "Tea is fine.")]  # a tie: not decided
    assert label_agreement(hedged, pairs) == (2, 3)
    assert label_agreement(hedged, []) == (0, 0)
