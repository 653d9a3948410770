"""The publish gate: the candidate and the served adapter sampled on held-out prompts with
one seed, through the same rollout-and-score step as PPO, and the verdict.

The gate trusts the user's judge (``PersonalRewardModel.judge``: a second reward head
trained on one half of the user's training prompts, which PPO never optimised), not the
reward PPO just optimised; both scores are reported. It also refuses a candidate whose
outputs degenerate (empty, cut at the token limit, repetitive) beyond the configured
shares and beyond the served adapter's by more than a margin (the samples are few), and
one too far from the base model (KL).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from trainer.config import PublishConfig
from trainer.data.chat import ChatMessages, prompt_text
from trainer.loop.degenerate import OutputHealth, output_health
from trainer.ppo.config import RewardFn
from trainer.ppo.experience import collect
from trainer.ppo.policies import PolicyPool
from trainer.ppo.rollout import render_prompts
from trainer.ppo.trainer import PPOTrainer
from trainer.reward.data import stable_hash

GATE_SEED = 20_011
"""One seed for every adapter the gate compares: their difference is not sampling noise."""
Snapshot = dict[str, torch.Tensor]


@dataclass(frozen=True)
class GateSample:
    """The completions one adapter sampled on the gate's prompts."""

    prompts: list[str]
    """(N,) the prompts as the policy saw them, one per completion."""
    completions: list[str]
    """(N,) the decoded completions."""
    ended: list[bool]
    """(N,) True where a completion ended with an end-of-sequence token."""


class GateSamples:
    """Each user's latest gate completions by the fingerprint of the weights and prompts
    they were sampled with: the served adapter's and the last candidate's (which becomes
    the served one when it is published). Sampling is seeded (``GATE_SEED``) and
    deterministic, so while a user's served adapter and gate prompts are unchanged a turn
    samples only its candidate: one generation of the gate's two."""

    KEEP = 2
    """Samples kept per user: the served adapter's and the last candidate's."""

    def __init__(self) -> None:
        self._kept: dict[str, dict[str, GateSample]] = {}

    def get(self, user_id: str, key: str) -> GateSample | None:
        kept = self._kept.get(user_id, {})
        if (sample := kept.pop(key, None)) is not None:
            kept[key] = sample  # the most recently used last
        return sample

    def put(self, user_id: str, key: str, sample: GateSample) -> None:
        kept = self._kept.setdefault(user_id, {})
        kept.pop(key, None)
        kept[key] = sample  # the most recently used last
        while len(kept) > self.KEEP:
            del kept[next(iter(kept))]

    def forget(self, user_id: str) -> None:
        self._kept.pop(user_id, None)


def fingerprint(weights: Snapshot, prompts: Sequence[ChatMessages], samples: int) -> str:
    """A digest of an adapter's weights and the gate's prompts and sample count."""
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(weights):
        digest.update(name.encode())
        digest.update(weights[name].detach().cpu().contiguous().view(torch.uint8).numpy())
    digest.update(json.dumps([[dict(m) for m in p] for p in prompts], sort_keys=True).encode())
    digest.update(str(samples).encode())
    return digest.hexdigest()


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


def rendered_reward(score: Callable[[str, list[str], list[str]], torch.Tensor],
                    ppo: PPOTrainer, user_id: str,
                    prompts: Sequence[ChatMessages]) -> RewardFn:
    """``score`` (a reward head of ``user_id``: the policy head or the judge) as a reward
    of ``prompts`` rendered by the policy's chat template, in the reward model's prompt
    format. A prompt outside ``prompts`` is an error: the reward model would read the
    template's text, a format it was never trained on."""
    as_text = dict(zip(render_prompts(ppo.pool.tokenizer, prompts),
                       [prompt_text(p) for p in prompts], strict=True))

    def reward(rendered: list[str], completions: list[str]) -> torch.Tensor:
        unknown = [r for r in rendered if r not in as_text]
        if unknown:
            raise ValueError(f"reward of user {user_id}: {len(unknown)} prompts it was not "
                             f"made for, e.g. {unknown[0]!r}")
        return score(user_id, [as_text[r] for r in rendered], completions)

    return reward


def held_out_sample(user_id: str, prompts: Sequence[ChatMessages],
                    limit: int) -> list[ChatMessages]:
    """At most ``limit`` of the user's held-out prompts, chosen by a stable hash, so the
    gate's work stays bounded as the history grows and the sample changes only when a
    new prompt hashes below the ones chosen."""
    ranked = sorted(prompts, key=lambda p: stable_hash(user_id, prompt_text(p)))
    return ranked[:limit]


def measure(ppo: PPOTrainer, user_id: str, prompts: Sequence[ChatMessages], judge: RewardFn,
            optimised: RewardFn, gate: PublishConfig, with_kl: bool = True,
            reuse: GateSample | None = None) -> tuple[AdapterSample, GateSample]:
    """``gate.eval_samples`` completions per prompt from the user's active adapter (or the
    completions ``reuse`` holds: the same weights, prompts and seed sample the same ones),
    scored now by both reward heads."""
    pool = ppo.pool
    pool.activate(user_id)
    batch = [p for p in prompts for _ in range(gate.eval_samples)]
    if reuse is None:  # sampled now: collect scores it with the judge
        exp = collect(pool.model, pool.tokenizer, ppo.generation, batch, judge, GATE_SEED,
                      ppo.config.temperature, evaluate=with_kl)
        reuse = GateSample(exp.rollout.prompts, exp.rollout.completions, exp.ended.tolist())
        judged, kl = exp.score, exp.kl
    else:
        with torch.no_grad():
            judged = mean_score(judge, reuse)
        kl = math.nan
    with torch.no_grad():
        optimised_score = mean_score(optimised, reuse)
    health = output_health(reuse.completions, reuse.ended, gate.repetition_ngram,
                           gate.max_repeated_ngram_share)
    return AdapterSample(judged, optimised_score, kl, health), reuse


def mean_score(score: RewardFn, sample: GateSample) -> float:
    """The mean of ``score`` over a sample's completions."""
    return torch.as_tensor(score(sample.prompts, sample.completions)).float().mean().item()


def compare(ppo: PPOTrainer, user_id: str, prompts: Sequence[ChatMessages], judge: RewardFn,
            optimised: RewardFn, gate: PublishConfig, served: Snapshot,
            kept: GateSamples) -> tuple[AdapterSample, AdapterSample, Snapshot]:
    """(served, candidate, candidate's weights): the user's current adapter (the candidate)
    and the ``served`` weights measured alike; the candidate is active again after. The
    served adapter's completions come from ``kept`` when it holds them for these weights
    and prompts (only the scores are recomputed); the candidate's are kept for the turn
    after its publication."""
    key = fingerprint(served, prompts, gate.eval_samples)
    reuse = kept.get(user_id, key)
    candidate = snapshot(ppo.pool, user_id)
    new, sample = measure(ppo, user_id, prompts, judge, optimised, gate)
    kept.put(user_id, fingerprint(candidate, prompts, gate.eval_samples), sample)
    if reuse is not None:
        old, _ = measure(ppo, user_id, prompts, judge, optimised, gate, reuse=reuse)
        return old, new, candidate
    restore(ppo.pool, user_id, served)
    old, sample = measure(ppo, user_id, prompts, judge, optimised, gate, with_kl=False)
    kept.put(user_id, key, sample)
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
