"""Surface features: what they measure, and that they let a head learn a preference
about length that the frozen, normalised embedding alone barely sees."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch

from trainer.reward.encoder import TextEncoder, default_backbone_dir
from trainer.reward.features import SURFACE_FEATURES, surface_features
from trainer.reward.model import PairExample, PersonalRewardModel, RewardModelConfig
from trainer.reward.users import UserHeadPool


def test_features_count_words_characters_and_non_empty_lines() -> None:
    text = "Pack light.\n\n- socks\n- a book"
    x = surface_features([text, ""])
    assert x.shape == (2, len(SURFACE_FEATURES))
    assert x[0].tolist() == pytest.approx([math.log1p(7), math.log1p(len(text)), math.log1p(3)])
    assert x[1].tolist() == [0.0, 0.0, 0.0]


# Answers on one topic that differ in how much they say, not in what they are about.
SENTENCES = (
    "Walking is good for the heart.", "A daily walk lifts the mood.",
    "It strengthens the legs and the back.", "Walking after meals helps digestion.",
    "Even ten minutes a day makes a difference.", "It is free and needs no equipment.",
    "Walking with friends makes it a habit.", "It helps you sleep better at night.",
)
PROMPT = "What are the benefits of walking?"


def _pairs(user: str, n: int, seed: int) -> list[PairExample]:
    """Pairs of answers one sentence apart; the shorter one is preferred."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        k = rng.randint(2, 6)
        short, long = " ".join(rng.sample(SENTENCES, k)), " ".join(rng.sample(SENTENCES, k + 1))
        pairs.append(PairExample(user, PROMPT, short, long))
    return pairs


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    torch.set_num_threads(2)
    cfg = RewardModelConfig()
    return TextEncoder.from_pretrained(
        default_backbone_dir(), "cpu", max_length=cfg.max_length, pooling=cfg.pooling,
        normalize=cfg.normalize, batch_size=cfg.encode_batch_size,
        cache_size=cfg.embedding_cache_size)


def _heldout_accuracy(encoder: TextEncoder, surface: bool) -> tuple[float, PersonalRewardModel]:
    model = PersonalRewardModel(RewardModelConfig(surface_features=surface, seed=0), encoder)
    model.train_user("brief", _pairs("brief", 24, seed=1))
    return model.pairwise_accuracy("brief", _pairs("brief", 200, seed=2)), model


def test_surface_features_let_a_head_learn_a_length_preference(encoder: TextEncoder) -> None:
    with_features, model = _heldout_accuracy(encoder, surface=True)
    without, _ = _heldout_accuracy(encoder, surface=False)
    assert with_features >= 0.85
    assert with_features - without >= 0.08, (with_features, without)
    head = model.users.get("brief")
    assert head is not None and model.hidden_size == encoder.hidden_size + 3
    words_weight = head.weight[encoder.hidden_size + SURFACE_FEATURES.index("log_words")]
    assert words_weight.item() < 0, "fewer words must score higher for this user"


def test_a_saved_head_of_another_width_is_ignored_and_retrained(tmp_path: Path) -> None:
    old = UserHeadPool(4, "cpu", max_resident=2)
    old.get_or_create("u").weight.data.fill_(1.0)
    old.save("u", tmp_path / "u.safetensors")
    pool = UserHeadPool(7, "cpu", max_resident=2,
                        user_source=lambda u: tmp_path / f"{u}.safetensors")
    assert pool.get("u") is None
    assert pool.get_or_create("u").weight.shape == (7,)
