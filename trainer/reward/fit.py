"""A user head's fit: an L2-regularised logistic regression on cached embeddings, solved by
L-BFGS, and the choice of its L2 strength by cross-validation over the user's prompts.

Shapes: F = feature width; N = 2P + M rows, the texts of P pairs and M thumbs laid out as
``model._texts`` does (every pair's chosen text, then every pair's rejected text, then the
thumbs' texts); ``offset`` is the fixed part of each row's reward (the shared head's).

    r = offset + e @ w + b                                  (N,) the rewards
    loss(l2) = examples_loss(r, items) + l2 (|w|^2 + b^2)   penalised mean loss

The objective is convex, so a fit reaches the same optimum from any start: warm starts
only save iterations. ``choose_l2`` deals the user's prompts into k folds (a ranking's
pairs share texts, so they never sit on both sides of a split), fits every L2 strength of
a grid on k - 1 folds, strongest first, each fit warm-started from the previous one (a
regularisation path), and keeps the strength whose fits rank the held-out fold best,
pooled over the k folds. It judges by held-out accuracy, not loss: a weak penalty gives
confident rewards whose held-out log-loss is poor even where they rank the pairs best, and
ranking is what the reward is used for (PPO's advantages, the gate's comparisons).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from trainer.reward.data import Example, PairExample, ThumbExample, stable_hash
from trainer.reward.losses import pairwise_loss, thumbs_loss

__all__ = ["HeadFit", "L2Choice", "choose_l2", "examples_accuracy", "examples_loss", "fit_head",
           "prompt_folds", "subset"]


@dataclass(frozen=True)
class HeadFit:
    """One head part's fitted residual."""

    weight: Tensor
    """(F,) weights."""
    bias: Tensor
    """() bias."""
    iterations: int
    """L-BFGS iterations taken."""
    loss: float
    """Penalised training loss at the fit."""


@dataclass(frozen=True)
class L2Choice:
    """The L2 strength cross-validation chose, and what it saw."""

    l2: float
    """The chosen strength."""
    grid: tuple[float, ...]
    """The strengths tried, strongest first."""
    cv_accuracy: tuple[float, ...]
    """Held-out accuracy per strength of ``grid``: the mean over every example of whether
    the fit that did not train on its fold ranks it right (``examples_accuracy``)."""


def examples_loss(r: Tensor, items: Sequence[Example]) -> Tensor:
    """Example-weighted mean of the Bradley-Terry loss (pairs) and BCE (thumbs), from the
    rewards r (2P + M,) of the items' texts in the module's row layout."""
    pairs = [x for x in items if isinstance(x, PairExample)]
    thumbs = [x for x in items if isinstance(x, ThumbExample)]
    n_p = len(pairs)
    loss = r.new_zeros(())
    if pairs:
        weight = r.new_tensor([p.weight for p in pairs])  # (P,)
        loss = loss + n_p * pairwise_loss(r[:n_p], r[n_p:2 * n_p], weight)
    if thumbs:
        label = r.new_tensor([t.label for t in thumbs])  # (M,)
        weight = r.new_tensor([t.weight for t in thumbs])  # (M,)
        loss = loss + len(thumbs) * thumbs_loss(r[2 * n_p:], label, weight)
    return loss / len(items)


def examples_accuracy(r: Tensor, items: Sequence[Example]) -> float:
    """Example-weighted share of the items the rewards r (2P + M,) get right: a pair when
    its chosen text scores higher, a thumbs when its reward's sign is its label's (a tie
    counts 1/2)."""
    pairs = [x for x in items if isinstance(x, PairExample)]
    thumbs = [x for x in items if isinstance(x, ThumbExample)]
    n_p = len(pairs)
    margin = torch.cat([r[:n_p] - r[n_p:2 * n_p],  # (P,) chosen over rejected
                        r[2 * n_p:] * r.new_tensor([2 * t.label - 1 for t in thumbs])])  # (M,)
    right = (margin > 0).to(r.dtype) + 0.5 * (margin == 0).to(r.dtype)  # (P + M,)
    weight = r.new_tensor([x.weight for x in [*pairs, *thumbs]])  # (P + M,)
    return float((weight * right).sum() / weight.sum())


def fit_head(e: Tensor, offset: Tensor, items: Sequence[Example], l2: float, weight: Tensor,
             bias: Tensor, max_iter: int) -> HeadFit:
    """Minimise ``examples_loss(offset + e @ w + b) + l2 (|w|^2 + b^2)`` over (w, b) by
    L-BFGS from (``weight`` (F,), ``bias`` ()), at most ``max_iter`` iterations."""
    w = weight.detach().clone().requires_grad_(True)  # (F,)
    b = bias.detach().clone().requires_grad_(True)  # ()
    optimizer = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-6,
                                  tolerance_change=1e-9)

    def penalised() -> Tensor:  # the user's loss + the L2 pull toward the shared model
        return examples_loss(offset + e @ w + b, items) + l2 * (w.pow(2).sum() + b.pow(2))

    def objective() -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = penalised()
        loss.backward()
        return loss

    optimizer.step(objective)  # type: ignore[arg-type]
    with torch.no_grad():
        final = penalised()
    iterations = int(optimizer.state[w].get("n_iter", 0))
    return HeadFit(w.detach(), b.detach(), iterations, final.item())


def prompt_folds(items: Sequence[Example], folds: int, seed: int) -> list[int]:
    """The fold (0 .. ``folds`` - 1) of every example: the distinct (user, prompt) keys,
    ordered by a seeded hash, are dealt round-robin, so all examples of a prompt (a whole
    ranking) share a fold and the folds differ by at most one prompt."""
    keys = sorted({(x.user_id, x.prompt) for x in items},
                  key=lambda k: stable_hash(str(seed), "cv", *k))
    fold = {k: i % folds for i, k in enumerate(keys)}
    return [fold[(x.user_id, x.prompt)] for x in items]


def subset(e: Tensor, offset: Tensor, items: Sequence[Example], keep: Sequence[bool]
           ) -> tuple[Tensor, Tensor, list[Example]]:
    """The kept examples (pairs first, then thumbs, each in order) with their rows of
    e (N, F) and offset (N,), in the same row layout."""
    pairs = [i for i, x in enumerate(items) if isinstance(x, PairExample)]
    thumbs = [i for i, x in enumerate(items) if isinstance(x, ThumbExample)]
    n_p = len(pairs)
    kept_pairs = [j for j, i in enumerate(pairs) if keep[i]]
    kept_thumbs = [k for k, i in enumerate(thumbs) if keep[i]]
    rows = [*kept_pairs, *(n_p + j for j in kept_pairs), *(2 * n_p + k for k in kept_thumbs)]
    index = torch.tensor(rows, dtype=torch.long, device=e.device)  # (N',)
    kept = [items[pairs[j]] for j in kept_pairs] + [items[thumbs[k]] for k in kept_thumbs]
    return e[index], offset[index], kept


def choose_l2(e: Tensor, offset: Tensor, items: Sequence[Example], grid: Sequence[float],
              folds: int, seed: int, max_iter: int) -> L2Choice | None:
    """The strength of ``grid`` with the best cross-validated accuracy over ``folds`` folds
    of the items' prompts (ties: the stronger); None when there are fewer prompts than
    folds."""
    fold = prompt_folds(items, folds, seed)
    if len(set(fold)) < folds:
        return None
    path = sorted(grid, reverse=True)  # strongest first: each fit starts near the next
    total = [0.0] * len(path)
    for k in range(folds):
        # 1. the fold's split: train on the other folds' prompts, validate on its own
        e_fit, offset_fit, fit_items = subset(e, offset, items, [f != k for f in fold])
        e_val, offset_val, val_items = subset(e, offset, items, [f == k for f in fold])
        w, b = e.new_zeros(e.shape[1]), e.new_zeros(())  # (F,), ()
        # 2. the regularisation path, each fit warm-started from the last
        for i, l2 in enumerate(path):
            fit = fit_head(e_fit, offset_fit, fit_items, l2, w, b, max_iter)
            w, b = fit.weight, fit.bias
            with torch.no_grad():
                r_val = offset_val + e_val @ w + b  # (N_val,)
                total[i] += len(val_items) * examples_accuracy(r_val, val_items)
    # 3. every example was held out once: the pooled held-out accuracy per strength
    cv_accuracy = tuple(t / len(items) for t in total)
    best = max(range(len(path)), key=lambda i: (cv_accuracy[i], -i))
    return L2Choice(path[best], tuple(path), cv_accuracy)
