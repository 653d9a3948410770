"""The publish gate: the candidate and the served adapter measured on held-out prompts
(mean reward and KL to the reference, through the same rollout-and-score step as PPO),
and the verdict."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from trainer.config import PublishConfig
from trainer.data.chat import ChatMessages
from trainer.ppo.config import RewardFn
from trainer.ppo.experience import collect
from trainer.ppo.trainer import PPOTrainer

GATE_SEED = 20_011
"""One seed for every adapter the gate compares: their difference is not sampling noise."""


def evaluate(ppo: PPOTrainer, user_id: str, prompts: Sequence[ChatMessages],
             reward_fn: RewardFn, samples: int, with_kl: bool = True) -> tuple[float, float]:
    """(mean score, mean per-sequence KL) of ``samples`` completions per prompt; the KL is
    NaN without ``with_kl`` (which saves two forward passes)."""
    pool = ppo.pool
    pool.activate(user_id)
    batch = [p for p in prompts for _ in range(samples)]
    exp = collect(pool.model, pool.tokenizer, ppo.generation, batch, reward_fn, GATE_SEED,
                  ppo.config.temperature, evaluate=with_kl)
    return exp.score, exp.kl


@dataclass(frozen=True)
class Verdict:
    publish: bool
    reason: str
    """Why the candidate is kept back: one of metrics.REFUSAL_REASONS ("" when published)."""
    decision: str
    """The decision as GetUserStatus shows it."""


def judge(gate: PublishConfig, steps: int, old: float, new: float, kl: float) -> Verdict:
    """Publish a candidate that took a PPO step, beats the served adapter's mean reward
    ``old`` by ``min_improvement`` and stays within the KL bound."""
    if steps == 0:
        return Verdict(False, "no_step", "kept: no PPO step (stop rule reached)")
    if not new > old + gate.min_improvement:
        return Verdict(False, "no_gain", f"kept: candidate reward {new:.3f} does not beat "
                       f"{old:.3f}")
    if not kl <= gate.kl_bound:
        return Verdict(False, "kl_bound", f"kept: KL {kl:.3f} over the bound {gate.kl_bound}")
    return Verdict(True, "", "publish")
