"""Pure reward-model maths on tensors: no models, no I/O.

Shapes: B = examples in a batch. A reward ``r`` is one scalar per example: the
positive-class logit of a binary "is this completion preferred" classifier.
Every function here is checked against a plain Python loop in
``tests/trainer/test_reward_model.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["pairwise_accuracy_from_rewards", "pairwise_loss", "thumbs_loss"]


def _weighted_mean(per_example: Tensor, weight: Tensor | None) -> Tensor:
    """Mean of ``weight * per_example`` over the batch (plain mean when ``weight`` is None)."""
    if weight is None:
        return per_example.mean()
    return (weight.to(per_example.dtype) * per_example).mean()


def pairwise_loss(r_chosen: Tensor, r_rejected: Tensor, weight: Tensor | None = None) -> Tensor:
    """Bradley-Terry loss: mean over the batch of ``weight * -log sigmoid(r_chosen - r_rejected)``.

    Under the Bradley-Terry model P(chosen > rejected) = sigmoid(r_chosen - r_rejected); this is
    its negative log-likelihood. ``logsigmoid`` keeps it finite for large margins.
    """
    margin = r_chosen - r_rejected  # (B,)
    return _weighted_mean(-F.logsigmoid(margin), weight)


def thumbs_loss(r: Tensor, label: Tensor, weight: Tensor | None = None) -> Tensor:
    """Binary cross-entropy with logits for thumbs feedback (label 1 = up, 0 = down).

    Mean over the batch of ``weight * -(y log sigmoid(r) + (1 - y) log sigmoid(-r))``.
    """
    per_example = F.binary_cross_entropy_with_logits(r, label.to(r.dtype), reduction="none")  # (B,)
    return _weighted_mean(per_example, weight)


def pairwise_accuracy_from_rewards(r_chosen: Tensor, r_rejected: Tensor) -> float:
    """Fraction of pairs where the chosen completion gets the higher reward (a tie counts 1/2)."""
    if r_chosen.numel() == 0:
        return float("nan")
    wins = (r_chosen > r_rejected).to(torch.float64)  # (B,)
    ties = (r_chosen == r_rejected).to(torch.float64)  # (B,)
    return float((wins + 0.5 * ties).mean())
