"""A user head's L2 strength chosen by cross-validation over the user's prompts
(``trainer.reward.fit``): the split, the pure maths against plain loops, a choice that
follows the data on synthetic features where the right strength is known, and the
model's use of it."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest
import torch

import trainer.reward.fit as fit_module
from services.contract.config import from_mapping
from tests.trainer.test_reward_model import make_triples, make_user
from trainer.reward.config import RewardModelConfig
from trainer.reward.data import Example, PairExample, ThumbExample
from trainer.reward.fit import choose_l2, examples_accuracy, prompt_folds, subset
from trainer.reward.model import PersonalRewardModel

GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


def _pairs(n_prompts: int, per_prompt: int, user: str = "u") -> list[PairExample]:
    """``per_prompt`` pairs (one ranking) at each of ``n_prompts`` prompts."""
    return [PairExample(user, f"prompt {g}", f"a {g}.{k}", f"b {g}.{k}")
            for g in range(n_prompts) for k in range(per_prompt)]


def _pair_rows(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (2P, F) whose chosen-minus-rejected differences are ``delta`` (P, F), and a
    zero offset (2P,)."""
    e = torch.cat([delta, torch.zeros_like(delta)])  # (2P, F)
    return e, e.new_zeros(e.shape[0])


# --- the split ------------------------------------------------------------------------------


def test_prompt_folds_keep_a_prompts_examples_together_and_balance_prompts() -> None:
    items: list[Example] = [*_pairs(10, 3), ThumbExample("u", "prompt 4", "t", 1.0)]
    random.Random(0).shuffle(items)
    folds = prompt_folds(items, 3, seed=0)
    of_prompt: dict[str, set[int]] = {}
    for item, fold in zip(items, folds, strict=True):
        of_prompt.setdefault(item.prompt, set()).add(fold)
    assert all(len(f) == 1 for f in of_prompt.values()), "a ranking split across folds"
    counts = [sum(f == {k} for f in of_prompt.values()) for k in range(3)]
    assert sorted(counts) == [3, 3, 4]
    assert prompt_folds(list(reversed(items)), 3, seed=0) == list(reversed(folds))
    assert prompt_folds(items, 3, seed=1) != folds


def test_cross_validation_never_trains_on_the_prompts_it_validates_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    items = _pairs(7, 6)
    delta = torch.randn(len(items), 5, generator=torch.Generator().manual_seed(0))
    e, offset = _pair_rows(delta)
    trained_on: list[set[str]] = []
    validated_on: list[set[str]] = []
    real_fit, real_accuracy = fit_module.fit_head, fit_module.examples_accuracy

    def spy_fit(e: torch.Tensor, offset: torch.Tensor, items: Sequence[Example],
                *args: Any) -> fit_module.HeadFit:
        trained_on.append({x.prompt for x in items})
        return real_fit(e, offset, items, *args)

    def spy_accuracy(r: torch.Tensor, items: Sequence[Example]) -> float:
        validated_on.append({x.prompt for x in items})
        return real_accuracy(r, items)

    monkeypatch.setattr(fit_module, "fit_head", spy_fit)
    monkeypatch.setattr(fit_module, "examples_accuracy", spy_accuracy)
    choice = choose_l2(e, offset, items, GRID, folds=3, seed=0, max_iter=50)
    assert choice is not None and choice.l2 in GRID
    assert choice.grid == tuple(sorted(GRID, reverse=True)), "strongest first"
    assert len(trained_on) == len(validated_on) == 3 * len(GRID)
    for fitted, held in zip(trained_on, validated_on, strict=True):
        assert fitted and held and not fitted & held
        assert fitted | held == {x.prompt for x in items}
    assert len({frozenset(h) for h in validated_on}) == 3, "each fold validated once"


def test_too_few_prompts_for_the_folds_gives_no_choice() -> None:
    items = _pairs(2, 6)
    e, offset = _pair_rows(torch.randn(len(items), 4))
    assert choose_l2(e, offset, items, GRID, folds=3, seed=0, max_iter=20) is None


# --- pure maths against plain loops ---------------------------------------------------------


def test_subset_takes_the_kept_examples_rows_in_the_same_layout() -> None:
    pairs, thumbs = _pairs(3, 2), [ThumbExample("u", f"prompt {g}", f"t {g}", 1.0)
                                   for g in range(3)]
    items: list[Example] = [thumbs[0], pairs[0], pairs[1], thumbs[1], *pairs[2:], thumbs[2]]
    texts = [p.chosen for p in pairs] + [p.rejected for p in pairs] + [t.completion
                                                                       for t in thumbs]
    e = torch.arange(len(texts), dtype=torch.float32).unsqueeze(1)  # (N, 1): row numbers
    keep = [x.prompt != "prompt 1" for x in items]
    e_sub, offset_sub, kept = subset(e, -e.squeeze(1), items, keep)
    kept_pairs = [x for x in kept if isinstance(x, PairExample)]
    kept_thumbs = [x for x in kept if isinstance(x, ThumbExample)]
    assert kept == [*kept_pairs, *kept_thumbs] and len(kept) == sum(keep)
    expected = ([texts.index(p.chosen) for p in kept_pairs]
                + [texts.index(p.rejected) for p in kept_pairs]
                + [texts.index(t.completion) for t in kept_thumbs])
    assert e_sub.squeeze(1).tolist() == expected
    assert (-offset_sub).tolist() == expected


def test_examples_accuracy_is_a_weighted_share_of_right_examples() -> None:
    pairs = [PairExample("u", "p", "a", "b", weight=w) for w in (1.0, 2.0, 1.0)]
    thumbs = [ThumbExample("u", "p", "c", label, weight=1.0) for label in (1.0, 0.0, 1.0)]
    r = torch.tensor([1.0, 0.0, 2.0,    # chosen
                      0.0, 1.0, 2.0,    # rejected: right, wrong, tie
                      0.5, 0.5, 0.0])   # thumbs: right, wrong, tie
    right = [1.0, 0.0, 0.5, 1.0, 0.0, 0.5]
    weight = [1.0, 2.0, 1.0, 1.0, 1.0, 1.0]
    expected = sum(w * x for w, x in zip(weight, right, strict=True)) / sum(weight)
    assert examples_accuracy(r, [*pairs, *thumbs]) == pytest.approx(expected)


# --- the choice follows the data -----------------------------------------------------------


def test_a_nuisance_direction_needs_a_weak_penalty() -> None:
    """Chosen minus rejected = (z + 0.1 u, z) with a large shared nuisance z and a small
    positive signal u: only a weakly penalised fit finds w ~ (1, -1); a strong penalty
    gives the mean difference ~ (1, 0), near chance."""
    g = torch.Generator().manual_seed(0)
    items = _pairs(12, 5)
    z, u = torch.randn(len(items), generator=g), torch.rand(len(items), generator=g)
    e, offset = _pair_rows(torch.stack([z + 0.1 * u, z], dim=1))  # (P, 2) differences
    choice = choose_l2(e, offset, items, GRID, folds=3, seed=0, max_iter=200)
    assert choice is not None and choice.l2 <= 1e-2, choice
    assert max(choice.cv_accuracy) >= 0.9 > choice.cv_accuracy[0]


def test_many_features_and_noisy_labels_need_a_strong_penalty() -> None:
    """Chosen minus rejected = 0.3 * 1 + noise in 50 dimensions, 60 pairs of which a fifth
    are flipped: the mean difference (what a strong penalty gives) is the best direction,
    while a weak penalty, with about as many features as pairs, fits the noise."""
    g = torch.Generator().manual_seed(0)
    items = _pairs(20, 3)
    delta = 0.3 + torch.randn(len(items), 50, generator=g)  # (P, 50)
    flip = torch.rand(len(items), generator=g) < 0.2
    delta[flip] = -delta[flip]
    e, offset = _pair_rows(delta)
    choice = choose_l2(e, offset, items, GRID, folds=3, seed=0, max_iter=200)
    assert choice is not None and choice.l2 >= 1.0, choice
    assert choice.cv_accuracy[0] > choice.cv_accuracy[-1] + 0.05, "strongest vs weakest"


# --- the model -----------------------------------------------------------------------------


def test_train_user_fits_each_head_with_a_cross_validated_strength_or_the_fallback() -> None:
    torch.set_num_threads(2)
    pairs, _ = make_user("formal", True, make_triples(32, 11), [])
    cv = PersonalRewardModel(RewardModelConfig(heldout_fraction=0.25, user_l2_grid=GRID))
    metrics = cv.train_user("formal", pairs)
    assert metrics.personal and all(l2 in GRID for l2 in metrics.user_l2), metrics.user_l2
    # more folds than the user has prompts: the configured strength, as without a grid
    few = RewardModelConfig(heldout_fraction=0.25, user_l2_grid=GRID, user_cv_folds=50)
    fallback = PersonalRewardModel(few, encoder=cv.encoder).train_user("formal", pairs)
    fixed = PersonalRewardModel(RewardModelConfig(heldout_fraction=0.25), encoder=cv.encoder)
    assert fallback.user_l2 == fixed.train_user("formal", pairs).user_l2 == (1e-3, 1e-3)


# --- configuration --------------------------------------------------------------------------


def test_the_grid_parses_from_the_environment_and_is_validated() -> None:
    cfg = from_mapping(RewardModelConfig, {"R_USER_L2_GRID": "1e-4, 1e-2,10",
                                           "R_USER_CV_FOLDS": "4"}, "R_")
    assert (cfg.user_l2_grid, cfg.user_cv_folds) == ((1e-4, 1e-2, 10.0), 4)
    assert from_mapping(RewardModelConfig, {"R_USER_L2_GRID": ""}, "R_").user_l2_grid == ()
    with pytest.raises(ValueError, match="user_l2_grid"):
        RewardModelConfig(user_l2_grid=(1e-3, 0.0))
    with pytest.raises(ValueError, match="user_cv_folds"):
        RewardModelConfig(user_cv_folds=1)
