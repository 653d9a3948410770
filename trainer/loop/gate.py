"""The publish gate: the candidate and the served adapter sampled on held-out prompts with
one seed, through the same rollout-and-score step as PPO, and the verdict.

The gate trusts the user's judge (``PersonalRewardModel.judge``: a second reward head
trained on the other half of the user's prompts, which PPO never optimised), not the
reward PPO just optimised; both scores are reported. It also refuses a candidate whose
outputs degenerate (empty, cut at the token limit, repetitive) beyond the configured
shares and beyond the served adapter's by more than a margin (the samples are few), and
one too far from the base model (KL).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from trainer.config import PublishConfig
from trainer.data.chat import ChatMessages, prompt_text
from trainer.loop.degenerate import OutputHealth, output_health
from trainer.ppo.config import RewardFn
from trainer.ppo.experience import collect
from trainer.ppo.policies import PolicyPool
from trainer.ppo.trainer import PPOTrainer
from trainer.reward.data import stable_hash

GATE_SEED = 20_011
"""One seed for every adapter the gate compares: their difference is not sampling noise."""
Snapshot = dict[str, torch.Tensor]


@dataclass(frozen=True)
class AdapterSample:
    """One adapter measured on the gate's prompts."""

    judge: float
    """Mean reward by the user's judge (held-out scorer)."""
    optimised: float
    """Mean reward by the reward PPO optimises."""
    kl: float
    """Mean per-sequence KL to the base model (NaN when not measured)."""
    health: OutputHealth


def held_out_sample(user_id: str, prompts: Sequence[ChatMessages],
                    limit: int) -> list[ChatMessages]:
    """At most ``limit`` of the user's held-out prompts, chosen by a stable hash, so the
    gate's work stays bounded as the history grows and the sample changes only when a
    new prompt hashes below the ones chosen."""
    ranked = sorted(prompts, key=lambda p: stable_hash(user_id, prompt_text(p)))
    return ranked[:limit]


def measure(ppo: PPOTrainer, user_id: str, prompts: Sequence[ChatMessages], judge: RewardFn,
            optimised: RewardFn, gate: PublishConfig, with_kl: bool = True) -> AdapterSample:
    """``gate.eval_samples`` completions per prompt from the user's active adapter."""
    pool = ppo.pool
    pool.activate(user_id)
    batch = [p for p in prompts for _ in range(gate.eval_samples)]
    exp = collect(pool.model, pool.tokenizer, ppo.generation, batch, judge, GATE_SEED,
                  ppo.config.temperature, evaluate=with_kl)
    rollout = exp.rollout
    with torch.no_grad():
        policy_score = torch.as_tensor(optimised(rollout.prompts, rollout.completions))
    health = output_health(rollout.completions, exp.ended.tolist(), gate.repetition_ngram,
                           gate.max_repeated_ngram_share)
    return AdapterSample(exp.score, policy_score.float().mean().item(), exp.kl, health)


def compare(ppo: PPOTrainer, user_id: str, prompts: Sequence[ChatMessages], judge: RewardFn,
            optimised: RewardFn, gate: PublishConfig,
            served: Snapshot) -> tuple[AdapterSample, AdapterSample, Snapshot]:
    """(served, candidate, candidate's weights): the user's current adapter (the candidate)
    and the ``served`` weights measured alike; the candidate is active again after."""
    new = measure(ppo, user_id, prompts, judge, optimised, gate)
    candidate = snapshot(ppo.pool, user_id)
    restore(ppo.pool, user_id, served)
    old = measure(ppo, user_id, prompts, judge, optimised, gate, with_kl=False)
    restore(ppo.pool, user_id, candidate)
    return old, new, candidate


@dataclass(frozen=True)
class Verdict:
    publish: bool
    reason: str
    """Why the candidate is kept back: one of metrics.REFUSAL_REASONS ("" when published)."""
    decision: str
    """The decision as GetUserStatus shows it."""


def verdict(gate: PublishConfig, steps: int, old: AdapterSample,
            new: AdapterSample) -> Verdict:
    """Publish a candidate that took a PPO step, does not degenerate, beats the served
    adapter's judge reward by ``min_improvement`` and stays within the KL bound."""
    if steps == 0:
        return Verdict(False, "no_step", "kept: no PPO step (stop rule reached)")
    if (broken := _degenerate(gate, old.health, new.health)) is not None:
        return Verdict(False, "degenerate", f"kept: candidate outputs degenerate ({broken})")
    if not new.judge > old.judge + gate.min_improvement:
        return Verdict(False, "no_gain", f"kept: candidate judge reward {new.judge:.3f} does "
                       f"not beat {old.judge:.3f} (optimised {new.optimised:.3f} vs "
                       f"{old.optimised:.3f})")
    if not new.kl <= gate.kl_bound:
        return Verdict(False, "kl_bound",
                       f"kept: KL {new.kl:.3f} over the bound {gate.kl_bound}")
    return Verdict(True, "", "publish")


def _degenerate(gate: PublishConfig, old: OutputHealth, new: OutputHealth) -> str | None:
    """What broke, when the candidate's share is beyond a bound and beyond the served
    adapter's by more than the margin."""
    for name, bound in (("empty", gate.max_empty_share),
                        ("truncated", gate.max_truncated_share),
                        ("repetitive", gate.max_repetitive_share)):
        share, before = getattr(new, name), getattr(old, name)
        if share > bound and share > before + gate.degenerate_margin:
            return f"{name} {share:.0%} > {bound:.0%}, served {before:.0%}"
    return None


def snapshot(pool: PolicyPool, user_id: str) -> Snapshot:
    return {k: p.detach().clone() for k, p in pool.adapter_parameters(user_id).items()}


def restore(pool: PolicyPool, user_id: str, snap: Snapshot) -> None:
    with torch.no_grad():
        for k, p in pool.adapter_parameters(user_id).items():
            p.copy_(snap[k])
