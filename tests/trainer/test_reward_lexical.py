"""The reward model's lexical features: the grams counted, the vector's norms, and that a
user head learns from them a preference about wording that carries to unseen wording."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

from trainer.reward.config import RewardModelConfig
from trainer.reward.data import PairExample
from trainer.reward.encoder import TextEncoder
from trainer.reward.lexical import grams, lexical_features, shape
from trainer.reward.model import PersonalRewardModel


def test_shapes_map_digits_capitals_and_letters_and_keep_other_characters() -> None:
    assert [shape(t) for t in ("1984", "Paris", "e.g.", "x2", "Abcdefgh")] == [
        "dddd", "Xxxxx", "x.x.", "xd", "Xxxxxx"]


def test_grams_are_tokens_neighbouring_pairs_and_shapes() -> None:
    assert grams("Hi, Bob 7") == ["w hi", "w ,", "w bob", "w 7", "b hi ,", "b , bob",
                                  "b bob 7", "s Xx", "s ,", "s Xxx", "s d"]
    assert grams("") == []


def test_features_are_unit_norm_deterministic_and_zero_for_an_empty_text() -> None:
    texts = ["The answer is 42.", "the ANSWER is 42.", "", "Something else entirely."]
    x = lexical_features(texts, 512)
    assert x.shape == (4, 512)
    assert torch.allclose(x.norm(dim=1), torch.tensor([1.0, 1.0, 0.0, 1.0]))
    assert torch.equal(x, lexical_features(texts, 512))
    # case changes only the shapes; another text shares little
    assert (x[0] @ x[1]).item() > 0.6 > (x[0] @ x[3]).item()
    # log-damped proportions: saying the same twice is not a different answer
    again = lexical_features(["yes yes", "yes yes yes yes"], 512)
    assert (again[0] @ again[1]).item() > 0.95


TOPICS = ["the bridge", "the tower", "the river", "the library", "the harbour", "the road",
          "the museum", "the park", "the stadium", "the canal", "the market", "the castle",
          "the lake", "the station", "the airport", "the garden"]


def figures_user(seed: int, topics: list[str]) -> list[PairExample]:
    """A user who prefers answers that give a figure, over the same answer without one."""
    rng = random.Random(seed)
    pairs = []
    for topic in topics:
        for _ in range(3):
            value = rng.randrange(10, 100)
            vague = f"{topic.capitalize()} is quite long and fairly old."
            figure = f"{topic.capitalize()} is {value} metres long and fairly old."
            pairs.append(PairExample("u", f"user: Tell me about {topic}.", figure, vague))
    return pairs


def test_a_head_learns_a_preference_for_figures_from_their_shapes(minilm: TextEncoder) -> None:
    """Trained on 8 topics with figures 10-99, ranked right on 8 other topics with other
    figures; the head leans on the lexical block more than on the encoder's."""
    cfg = RewardModelConfig(heldout_fraction=0.0, user_min_examples=4)
    train, held = figures_user(0, TOPICS[:8]), figures_user(1, TOPICS[8:])
    model = PersonalRewardModel(cfg, minilm)
    model.train_user("u", train)
    assert model.pairwise_accuracy("u", held) == 1.0
    weight = model.users.state_dict("u")["weight"][0]  # the policy head (F,)
    lexical = weight[minilm.feature_size:]
    assert lexical.norm() > weight[:minilm.feature_size].norm() > 0
    with pytest.raises(ValueError, match="lexical_dim"):
        replace(cfg, lexical_dim=-1)
