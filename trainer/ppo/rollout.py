"""Rollouts for PPO: chat prompts -> left-padded token batch -> sampled completions.

Sampling runs through HF ``generate`` on the current policy (the user's adapter
active). The log-probabilities used by the loss are not taken from ``generate``:
the trainer recomputes them with its own forward pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import GenerationConfig, PreTrainedTokenizerBase

from trainer.data.chat import ChatMessages


@dataclass(frozen=True)
class Rollout:
    """A batch of prompts and the completions sampled for them."""

    query_ids: Tensor
    """(B, P) prompt tokens, left-padded."""
    query_mask: Tensor
    """(B, P) 1 on real prompt tokens, 0 on left padding."""
    response_ids: Tensor
    """(B, R) sampled tokens; positions after the first EOS are padding."""
    response_mask: Tensor
    """(B, R) 1 on real response tokens up to and including the first EOS."""
    prompts: list[str]
    """The prompts as the model saw them (chat template applied)."""
    completions: list[str]
    """The decoded completions, special tokens removed."""


def render_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[ChatMessages]
) -> list[str]:
    """Apply the tokenizer's chat template, ending with the assistant's turn."""
    return [
        tokenizer.apply_chat_template(list(chat), tokenize=False, add_generation_prompt=True)
        for chat in prompts
    ]


def eos_token_ids(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every token id that ends a generation (the model's and the tokenizer's)."""
    ids = getattr(model.generation_config, "eos_token_id", None)
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def response_mask(response_ids: Tensor, eos_ids: Sequence[int]) -> Tensor:
    """(B, R) 1 up to and including each row's first EOS token (all 1 when it has none)."""
    is_eos = torch.isin(response_ids, torch.tensor(list(eos_ids), device=response_ids.device))
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()  # EOS strictly before t
    return (eos_before == 0).long()


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's RNGs for the block without disturbing the caller's RNG state."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def sample_rollout(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[ChatMessages],
    generation: GenerationConfig,
    seed: int,
) -> Rollout:
    """Sample one completion per prompt with the model's active adapter."""
    device = next(model.parameters()).device
    texts = render_prompts(tokenizer, prompts)
    batch = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left",
                      add_special_tokens=False)
    query_ids = batch["input_ids"].to(device)  # (B, P)
    query_mask = batch["attention_mask"].to(device)  # (B, P)
    with seeded(seed, device):
        output = model.generate(
            input_ids=query_ids, attention_mask=query_mask, generation_config=generation
        )  # (B, P + R)
    response_ids = output[:, query_ids.shape[1]:]  # (B, R)
    mask = response_mask(response_ids, eos_token_ids(model, tokenizer))  # (B, R)
    response_ids = torch.where(mask.bool(), response_ids, generation.pad_token_id)
    completions = tokenizer.batch_decode(response_ids, skip_special_tokens=True)
    return Rollout(query_ids, query_mask, response_ids, mask, texts, completions)


def generation_config(
    tokenizer: PreTrainedTokenizerBase,
    eos_ids: Sequence[int],
    max_new_tokens: int,
    temperature: float,
    top_p: float,
) -> GenerationConfig:
    """Pure temperature / nucleus sampling (no top-k, no repetition penalty)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    return GenerationConfig(
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        top_k=0,
        max_new_tokens=max_new_tokens,
        eos_token_id=list(eos_ids),
        pad_token_id=pad_id,
    )
