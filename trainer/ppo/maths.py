"""Pure PPO maths on tensors: no models, no I/O.

Shapes: B = batch (sequences), T = response tokens, V = vocabulary. A ``mask``
is 1 on a sequence's real response tokens and 0 after its end (padding).
Every function here is checked against a plain Python loop in
``tests/trainer/test_ppo_math.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "adaptive_kl_coef",
    "approx_kl",
    "clipped_pg_loss",
    "clipped_value_loss",
    "entropy_from_logits",
    "gae",
    "leave_one_out_advantages",
    "logprobs_from_logits",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "per_token_kl",
    "shaped_rewards",
]


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1 (all of them, or along ``dim``)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over the masked positions (Bessel-corrected when ``unbiased``)."""
    mask = mask.to(x.dtype)
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        var = var * n / (n - 1).clamp(min=1.0)
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise ``x`` to zero mean and unit (unbiased) variance over the mask; 0 elsewhere.

    With ``shift_mean=False`` only the scale changes and the mean is added back.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(x.dtype)


def logprobs_from_logits(logits: Tensor, tokens: Tensor) -> Tensor:
    """Log-probability of each token under its logits: (B, T, V), (B, T) -> (B, T)."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    return torch.gather(logp, 2, tokens.unsqueeze(-1)).squeeze(-1)  # (B, T)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the categorical distribution at each position: (B, T, V) -> (B, T)."""
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)  # (B, T, V)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)  # (B, T)


def per_token_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token KL estimate between the policy and the reference: ``logp - ref_logp``."""
    return logprobs - ref_logprobs


def shaped_rewards(
    scores: Tensor, logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, kl_coef: float
) -> Tensor:
    """Per-token rewards (Ziegler et al. 2019): ``-kl_coef * kl`` everywhere, plus the
    sequence's score at its last real token. (B,), (B, T) x3 -> (B, T).

    Every row of ``mask`` must have at least one real token.
    """
    mask = mask.to(logprobs.dtype)
    rewards = -kl_coef * per_token_kl(logprobs, ref_logprobs) * mask  # (B, T)
    last = mask.sum(1).long() - 1  # (B,) index of each sequence's last token
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last] += scores.to(rewards.dtype)
    return rewards


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) by reverse-time recursion.

    Positions where ``mask`` is 0 are skipped: they get 0 advantage and return, and
    the recursion carries over them unchanged, so the value after a sequence's last
    real token is 0 (episode end, no bootstrap). (B, T) x3 -> advantages, returns (B, T).
    """
    mask = mask.to(values.dtype)
    next_value = torch.zeros_like(values[:, 0])  # (B,)
    last_gae_lam = torch.zeros_like(values[:, 0])  # (B,)
    advantages = torch.zeros_like(values)  # (B, T)
    for t in reversed(range(values.shape[1])):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        step_gae_lam = delta + gamma * lam * last_gae_lam
        advantages[:, t] = step_gae_lam * m
        # masked positions leave the carried value and advantage as they were
        next_value = m * values[:, t] + (1 - m) * next_value
        last_gae_lam = m * step_gae_lam + (1 - m) * last_gae_lam
    returns = (advantages + values) * mask
    return advantages, returns


def leave_one_out_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """REINFORCE leave-one-out (RLOO, Kool et al. 2019; Ahmadian et al. 2024): each
    sample's sequence reward minus the mean reward of the other samples of its prompt.

    ``rewards`` (B,) holds B / ``group_size`` groups of ``group_size`` consecutive samples,
    each group one prompt's. The baseline takes the prompt's own difficulty out of the
    advantage without a learnt value function. (B,) -> (B,).
    """
    if group_size < 2 or rewards.shape[0] % group_size:
        raise ValueError(f"leave-one-out needs groups of >= 2 samples dividing the batch, "
                         f"got {rewards.shape[0]} rewards in groups of {group_size}")
    grouped = rewards.reshape(-1, group_size)  # (B / k, k)
    others = (grouped.sum(1, keepdim=True) - grouped) / (group_size - 1)  # (B / k, k)
    return (grouped - others).reshape(-1)  # (B,)


def clipped_pg_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, cliprange: float
) -> tuple[Tensor, Tensor]:
    """PPO clipped surrogate (Schulman et al. 2017), to minimise.

    Returns ``(pg_loss, clipfrac)``: the masked mean of
    ``max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))`` and the fraction of
    tokens where the clipped term was the larger one.
    """
    ratio = torch.exp(logprobs - old_logprobs)  # (B, T)
    pg_losses = -advantages * ratio
    pg_losses_clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    pg_loss = masked_mean(torch.max(pg_losses, pg_losses_clipped), mask)
    clipfrac = masked_mean((pg_losses_clipped > pg_losses).to(logprobs.dtype), mask)
    return pg_loss, clipfrac


def clipped_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, cliprange_value: float
) -> tuple[Tensor, Tensor]:
    """Clipped value loss: ``0.5 * max((v - R)^2, (clip(v, v_old +- eps) - R)^2)``.

    Returns ``(v_loss, vf_clipfrac)``, both masked means.
    """
    delta = torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    values_clipped = old_values + delta
    v_losses = (values - returns) ** 2
    v_losses_clipped = (values_clipped - returns) ** 2
    v_loss = 0.5 * masked_mean(torch.max(v_losses, v_losses_clipped), mask)
    vf_clipfrac = masked_mean((v_losses_clipped > v_losses).to(values.dtype), mask)
    return v_loss, vf_clipfrac


def approx_kl(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor) -> Tensor:
    """Unbiased low-variance estimate of KL(old || new): mean of ``(r - 1) - log r``."""
    logratio = logprobs - old_logprobs
    return masked_mean(torch.exp(logratio) - 1 - logratio, mask)


def adaptive_kl_coef(
    kl_coef: float, kl: float, target_kl: float, n_steps: int, horizon: int
) -> float:
    """Ziegler et al. (2019) proportional controller for the KL penalty coefficient.

    ``kl_coef * (1 + clip(kl / target_kl - 1, -0.2, 0.2) * n_steps / horizon)``.
    """
    proportional_error = min(max(kl / target_kl - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + proportional_error * n_steps / horizon)
