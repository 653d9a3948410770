"""The encoder's optional poolings over the completion's own tokens (``completion_pooling``):
per depth, beside the pooling over every token, the mean and the element-wise max of the
completion's token states, each normalised like the other blocks."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from trainer.reward.config import RewardModelConfig
from trainer.reward.encoder import TextEncoder
from trainer.reward.model import PersonalRewardModel

PROMPTS = ["user: Why is the sky blue?", "user: Name a prime number."]
COMPLETIONS = ["Sunlight scatters off air molecules, and blue light scatters the most.",
               "Seven."]


@pytest.fixture(scope="module")
def spans() -> TextEncoder:
    return PersonalRewardModel(RewardModelConfig(completion_pooling=("mean", "max"))).encoder


def test_each_depth_adds_the_completions_mean_and_max(spans: TextEncoder) -> None:
    e = spans.encode(PROMPTS, COMPLETIONS)  # (2, 7 depths x 3 blocks x H)
    assert spans.blocks == 3 * len(spans.depths)
    assert e.shape == (2, spans.blocks * spans.hidden_size)
    batch = spans.tokenizer(PROMPTS, COMPLETIONS, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = spans.backbone(**batch, output_hidden_states=True).hidden_states
    blocks = e.view(2, len(spans.depths), 3, spans.hidden_size)
    for i in range(2):
        own = (batch["attention_mask"][i] * batch["token_type_ids"][i]).bool()  # (T,)
        real = batch["attention_mask"][i].bool()
        for j, d in enumerate(spans.depths):
            h = states[d][i]  # (T, H)
            expected = (h[real].mean(0), h[own].mean(0), h[own].max(0).values)
            for k, x in enumerate(expected):
                torch.testing.assert_close(blocks[i, j, k], F.normalize(x, dim=0),
                                           atol=1e-5, rtol=1e-4)


def test_trained_top_layers_on_cached_states_pool_the_completion_alike(
        spans: TextEncoder) -> None:
    tuned = TextEncoder(copy.deepcopy(spans.backbone), spans.tokenizer,
                        max_length=spans.max_length, pooling=spans.pooling,
                        normalize=spans.normalize, batch_size=8, cache_size=0, tuned_layers=2,
                        state_cache_size=16, layer_pooling=spans.layer_pooling,
                        completion_pooling=spans.completion_pooling)
    with torch.no_grad():
        cached = tuned.embed(PROMPTS, COMPLETIONS, grad=True)  # top layers on cached states
    torch.testing.assert_close(cached, spans.encode(PROMPTS, COMPLETIONS), atol=1e-5,
                               rtol=1e-4)


def test_the_lexical_block_keeps_its_weight_against_more_blocks(spans: TextEncoder) -> None:
    model = PersonalRewardModel(RewardModelConfig(completion_pooling=("mean", "max"),
                                                  length_weight=0.0), spans)
    e = model.head_inputs(PROMPTS, COMPLETIONS)
    encoder_norm = e[:, :spans.feature_size].norm(dim=1)  # sqrt(blocks): unit blocks
    lexical_norm = e[:, spans.feature_size:].norm(dim=1)
    torch.testing.assert_close(lexical_norm, encoder_norm)


def test_settings_that_cannot_hold_are_refused(spans: TextEncoder, minilm: TextEncoder,
                                               tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="completion_pooling"):
        RewardModelConfig(completion_pooling=("min",))
    with pytest.raises(ValueError, match="pools the completion"):
        PersonalRewardModel(RewardModelConfig(completion_pooling=("max",)), minilm)
    path = PersonalRewardModel(RewardModelConfig(), minilm).save_shared(tmp_path / "s.st")
    other = PersonalRewardModel(RewardModelConfig(completion_pooling=("mean", "max")), spans)
    with pytest.raises(ValueError, match="completion_pooling"):
        other.load_shared(path)
