"""A turn without new data (TrainerService's continuing turns) on the tiny policy and the
real reward model: PPO goes on from the user's adapter, scored by the reward heads
already fitted, which are not trained again; the turn says why its PPO stopped."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

# the gate test's learner (tiny policy, MiniLM reward model) and its user's history
from tests.trainer.test_learner_gate import HELDOUT, USER, joined_history, learner_setup
from trainer.data.examples import build_examples
from trainer.data.preferences import PreferenceConfig
from trainer.loop.gate import snapshot
from trainer.ppo.config import UserProgress

__all__ = ["learner_setup"]


def test_a_turn_without_new_data_reuses_the_fitted_reward_model(learner_setup) -> None:  # type: ignore[no-untyped-def]
    learner, cfg, _, _ = learner_setup
    ex = build_examples(USER, joined_history(), PreferenceConfig(), HELDOUT)
    fits: list[str] = []

    def counting(name: str) -> Any:
        method = getattr(learner._models()[0], name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            fits.append(name)
            return method(*args, **kwargs)
        return wrapped

    rm = learner._models()[0]
    rm.train_shared, rm.train_user = counting("train_shared"), counting("train_user")

    # no fit in this process yet: the flag cannot skip it
    first = learner.turn(USER, ex, refit_reward=False)
    assert fits == ["train_shared", "train_user"]
    assert (first.steps, first.ppo_stop) == (2, "budget")
    total = first.ppo_total_steps
    assert total == learner._ppo.progress(USER).steps >= 2

    before = snapshot(learner._ppo.pool, USER)
    again = learner.turn(USER, ex, refit_reward=False)
    assert fits == ["train_shared", "train_user"], "the fitted heads stand in for the user"
    assert (again.steps, again.ppo_stop, again.ppo_total_steps) == (2, "budget", total + 2)
    assert again.rm_accuracy == first.rm_accuracy and again.rm_heldout_pairs > 0
    after = snapshot(learner._ppo.pool, USER)
    assert any(not torch.equal(before[k], after[k]) for k in before), "PPO moved the adapter"

    # new data: refitted
    learner.turn(USER, ex)
    assert fits[2:] == ["train_shared", "train_user"]

    # the seed's stop rule, reported by the turn: the step cap ...
    ppo = learner._ppo
    learner._cfg = dataclasses.replace(cfg, ppo=dataclasses.replace(
        cfg.ppo, max_steps=ppo.progress(USER).steps + 1))
    ppo.config = learner._cfg.ppo
    capped = learner.turn(USER, ex, refit_reward=False)
    assert (capped.steps, capped.ppo_stop) == (1, "max_steps")
    # ... and the threshold (any rollout reaches -inf): no update, the stop is reported
    learner._cfg = dataclasses.replace(cfg, ppo=dataclasses.replace(
        cfg.ppo, reward_threshold=float("-inf")))
    ppo.config = learner._cfg.ppo
    ppo.set_progress(USER, UserProgress(steps=1, kl_coef=cfg.ppo.kl_coef))
    reached = learner.turn(USER, ex, refit_reward=False)
    assert (reached.steps, reached.ppo_stop, reached.ppo_total_steps) == (0, "threshold", 1)
    ppo.config = cfg.ppo
    learner._cfg = cfg
