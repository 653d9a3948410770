"""Steps 1-3 of a PPO iteration, shared by training and by the publish gate:
sample completions with the user's policy, score them, and evaluate the policy and
the reference (the same model with the adapter disabled) on them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import GenerationConfig, PreTrainedTokenizerBase

from trainer.data.chat import ChatMessages
from trainer.ppo import maths as ppo_math
from trainer.ppo.config import RewardFn
from trainer.ppo.rollout import Rollout, sample_rollout


@dataclass(frozen=True)
class PolicyOutput:
    """One forward pass over prompt + response."""

    logprobs: Tensor
    """(B, R) log-probabilities of the response tokens."""
    values: Tensor | None
    """(B, R) value estimates before each response token (None without a value head)."""
    entropy: Tensor
    """(B, R) policy entropy at each response position (no gradient)."""


def policy_forward(
    model: nn.Module, value_head: nn.Linear | None, rollout: Rollout, temperature: float
) -> PolicyOutput:
    """Score the rollout's response tokens with ``model`` as it is now (adapter on or off)."""
    input_ids = torch.cat([rollout.query_ids, rollout.response_ids], dim=1)  # (B, P + R)
    attention_mask = torch.cat([rollout.query_mask, rollout.response_mask], dim=1)  # (B, P + R)
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)  # left padding aware
    p, r = rollout.query_ids.shape[1], rollout.response_ids.shape[1]
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logits_to_keep=r + 1,
        output_hidden_states=value_head is not None,
        use_cache=False,
    )
    logits = out.logits[:, :-1].float() / temperature  # (B, R, V) predicts response token t
    logprobs = ppo_math.logprobs_from_logits(logits, rollout.response_ids)  # (B, R)
    with torch.no_grad():
        entropy = ppo_math.entropy_from_logits(logits)  # (B, R)
    values = None
    if value_head is not None:
        hidden = out.hidden_states[-1][:, p - 1 : p + r - 1]  # (B, R, H) state before token t
        values = value_head(hidden.to(value_head.weight.dtype)).squeeze(-1)  # (B, R)
    return PolicyOutput(logprobs, values, entropy)


@dataclass(frozen=True)
class Experience:
    """What steps 1-3 collected."""

    rollout: Rollout
    scores: Tensor
    """(B,) reward-model scores (minus the missing-EOS penalty where it applies)."""
    ended: Tensor
    """(B,) True where the completion ended with an end-of-sequence token (not cut at the
    token limit)."""
    old: PolicyOutput | None
    """The policy's log-probs and values at rollout time (None when not evaluated)."""
    ref_logprobs: Tensor | None
    """(B, R) reference log-probs, adapter disabled (None when not evaluated)."""
    seed: int
    """Seed of the sampling (and of the minibatch order in training)."""
    started: float
    """perf_counter() at the start of step 1."""
    score: float
    """Mean score."""
    kl: float
    """Mean over sequences of the summed per-token KL to the reference (NaN when not
    evaluated)."""


@torch.no_grad()
def collect(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    generation: GenerationConfig,
    prompts: Sequence[ChatMessages],
    reward_fn: RewardFn,
    seed: int,
    temperature: float,
    value_head: nn.Linear | None = None,
    evaluate: bool = True,
    missing_eos_penalty: float = 0.0,
) -> Experience:
    """Rollout, scores and (with ``evaluate``) policy and reference evaluation of one
    batch, with the adapter that is active on ``model``. The same seed gives two
    adapters the same random numbers, so their difference is not sampling noise.
    A completion cut at the token limit scores ``missing_eos_penalty`` less (as TRL's
    ``missing_eos_penalty``)."""
    started = time.perf_counter()

    # 1. rollout: sample completions with the user's current policy
    rollout = sample_rollout(model, tokenizer, prompts, generation, seed)
    mask = rollout.response_mask.float()  # (B, R)

    # 2. score the completions
    scores = torch.as_tensor(reward_fn(rollout.prompts, rollout.completions))
    scores = scores.to(device=mask.device, dtype=torch.float32).reshape(-1)  # (B,)
    if scores.shape[0] != len(prompts):
        raise ValueError(f"reward_fn returned {scores.shape[0]} scores for {len(prompts)}")
    eos = generation.eos_token_id
    eos_ids = torch.as_tensor(eos if isinstance(eos, list) else [eos],
                              device=rollout.response_ids.device)
    ended = (torch.isin(rollout.response_ids, eos_ids) & (mask > 0)).any(1)  # (B,)
    scores = scores - missing_eos_penalty * (~ended).float()  # (B,)
    if not evaluate:
        return Experience(rollout, scores, ended, None, None, seed, started,
                          score=scores.mean().item(), kl=float("nan"))

    # 3. evaluate: old log-probs and values under the policy, ref log-probs adapter off
    old = policy_forward(model, value_head, rollout, temperature)
    with model.disable_adapter():
        ref = policy_forward(model, None, rollout, temperature)
    kl_tokens = ppo_math.per_token_kl(old.logprobs, ref.logprobs) * mask  # (B, R)
    return Experience(rollout, scores, ended, old, ref.logprobs, seed, started,
                      score=scores.mean().item(), kl=kl_tokens.sum(1).mean().item())
