"""A decoder LM as the reward model's backbone (``RewardModelConfig.backbone``): its
tokenizer has no separator token, so the completion must not run into the prompt, and
"final" pooling must read the last real token whatever the padding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer.reward.encoder import TextEncoder


@pytest.fixture(scope="module")
def decoder(tiny_model_dir: Path) -> TextEncoder:
    return TextEncoder.from_pretrained(tiny_model_dir, "cpu", max_length=64, pooling="final",
                                       normalize=False, batch_size=8, cache_size=0,
                                       layer_pooling="last")


def test_a_decoder_reads_the_completion_on_its_own_line(decoder: TextEncoder) -> None:
    assert decoder.tokenizer.sep_token is None
    batch = decoder._tokenize([("user: hi there", "Hello, friend!")])
    text = decoder.tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True)
    assert text.endswith("user: hi there\nHello, friend!")


@pytest.mark.parametrize("side", ["right", "left"])
def test_final_pooling_reads_the_last_real_token_of_each_text(decoder: TextEncoder,
                                                              side: str) -> None:
    keys = [("user: hi", "ok"), ("user: tell me everything about tea", "Tea is a drink " * 4)]
    decoder.tokenizer.padding_side = side
    try:
        together = decoder.encode([p for p, _ in keys], [c for _, c in keys])  # padded batch
        alone = torch.cat([decoder.encode([p], [c]) for p, c in keys])  # no padding
    finally:
        decoder.tokenizer.padding_side = "right"
    short = decoder._tokenize(keys[:1])["input_ids"].shape[1]
    longest = decoder._tokenize(keys)["input_ids"].shape[1]
    assert short < longest  # the short text really was padded
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)
