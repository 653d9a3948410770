"""The reward model's optional length input: log(1 + characters) of the completion, one
more column of the heads' input, learnt like any other."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from trainer.reward.config import RewardModelConfig
from trainer.reward.data import PairExample
from trainer.reward.encoder import TextEncoder
from trainer.reward.model import PersonalRewardModel

TOPICS = ["the bridge", "the tower", "the river", "the library", "the harbour", "the road",
          "the museum", "the park", "the stadium", "the canal", "the market", "the castle"]
CLAUSES = ["It is old.", "Many people visit it.", "It was rebuilt once.", "It is busy.",
           "It appears in songs.", "Locals like it."]


def brief_user(topics: list[str], offset: int) -> list[PairExample]:
    """A user who prefers the shorter of two answers made of the same kind of clauses."""
    pairs = []
    for i, topic in enumerate(topics):
        k = 1 + (i + offset) % 3
        short = " ".join(CLAUSES[:k])
        long = " ".join(CLAUSES[:k + 3])
        pairs.append(PairExample("u", f"user: Tell me about {topic}.", short, long))
    return pairs


def test_the_length_column_is_the_scaled_log_length(minilm: TextEncoder) -> None:
    plain = PersonalRewardModel(RewardModelConfig(length_weight=0.0), minilm)
    model = PersonalRewardModel(RewardModelConfig(length_weight=0.5), minilm)
    assert model.hidden_size == plain.hidden_size + 1
    e = model.head_inputs(["p", "p"], ["", "four"])  # (2, F + 1)
    assert e[:, -1].tolist() == pytest.approx([0.0, 0.5 * math.log(5)])
    assert e[:, :-1].equal(plain.head_inputs(["p", "p"], ["", "four"]))


def test_a_head_weighs_length_where_the_user_prefers_brevity(minilm: TextEncoder) -> None:
    cfg = RewardModelConfig(heldout_fraction=0.0, user_min_examples=4, length_weight=1.0)
    model = PersonalRewardModel(cfg, minilm)
    model.train_user("u", brief_user(TOPICS[:8], 0))
    assert model.pairwise_accuracy("u", brief_user(TOPICS[8:], 1)) == 1.0
    weight = model.users.state_dict("u")["weight"][0]  # the policy head (F + 1,)
    assert weight[-1] < 0  # longer scores lower


def test_a_shared_file_refuses_a_model_with_another_length_weight(
        minilm: TextEncoder, tmp_path: Path) -> None:
    path = PersonalRewardModel(RewardModelConfig(length_weight=0.0), minilm).save_shared(
        tmp_path / "s.st")
    other = PersonalRewardModel(RewardModelConfig(length_weight=1.0), minilm)
    with pytest.raises(ValueError, match="length_weight"):
        other.load_shared(path)
    with pytest.raises(ValueError, match="length_weight"):
        replace(RewardModelConfig(), length_weight=-1.0)
