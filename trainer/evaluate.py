"""Mean reward and KL to the reference of a user's current policy on given prompts."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from trainer import ppo_math
from trainer.ppo import PPOTrainer, policy_forward
from trainer.rollout import ChatMessages, sample_rollout


@torch.no_grad()
def evaluate(ppo: PPOTrainer, user_id: str, prompts: Sequence[ChatMessages], reward_fn,  # type: ignore[no-untyped-def]
             samples: int, seed: int = 20_011, with_kl: bool = True) -> tuple[float, float]:
    """(mean score, mean per-sequence KL) of ``samples`` completions per prompt; the KL is
    NaN without ``with_kl`` (which saves two forward passes).

    A fixed seed gives two adapters the same random numbers, so their
    difference is not sampling noise.
    """
    pool = ppo.pool
    pool.activate(user_id)
    model = pool.model
    batch = [p for p in prompts for _ in range(samples)]
    # 1. sample with the user's adapter
    rollout = sample_rollout(model, pool.tokenizer, batch, ppo.generation, seed)
    mask = rollout.response_mask.float()  # (B, R)
    # 2. score, and KL against the same model with the adapter disabled
    scores = torch.as_tensor(reward_fn(rollout.prompts, rollout.completions)).float()  # (B,)
    if not with_kl:
        return scores.mean().item(), float("nan")
    logprobs = policy_forward(model, None, rollout, ppo.config.temperature).logprobs  # (B, R)
    with model.disable_adapter():
        ref = policy_forward(model, None, rollout, ppo.config.temperature).logprobs  # (B, R)
    kl = (ppo_math.per_token_kl(logprobs, ref) * mask).sum(1)  # (B,)
    return scores.mean().item(), kl.mean().item()
