"""Per-user PPO on a LoRA policy (CleanRL-style loop, InstructGPT-style rewards).

Policy = shared base model + the user's LoRA (from a :class:`PolicyPool`);
reference = the same model with the adapter disabled; value = a per-user linear
head on the final hidden state. One iteration of :meth:`PPOTrainer.train_user`:

1. rollout: sample completions for a batch of the user's chat prompts
   (``samples_per_prompt`` of each)
2. score them with the caller's ``reward_fn``
3. evaluate: policy log-probs and values, reference log-probs (adapter off)
4. stop if the mean score reached ``reward_threshold``
5. advantages, by ``advantage``:
   "gae": rewards = -kl_coef * KL per token + score at the last token; GAE on the value head;
   "rloo": reward = score - kl_coef * the sequence's KL, minus the mean of the other
   samples of its prompt (REINFORCE leave-one-out), at every token; then whitening
6. PPO epochs over minibatches: clipped surrogate (+ clipped value loss with GAE)
7. adapt kl_coef toward ``target_kl`` (optional)
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from trainer.data.chat import ChatMessages
from trainer.ppo import maths as ppo_math
from trainer.ppo.config import (
    PPOConfig,
    PPORunResult,
    PPOStepMetrics,
    RewardFn,
    StopReason,
    UserProgress,
)
from trainer.ppo.experience import Experience, PolicyOutput, collect, policy_forward
from trainer.ppo.policies import PolicyPool
from trainer.ppo.rollout import Rollout, eos_token_ids, generation_config

logger = logging.getLogger(__name__)

__all__ = ["PPOConfig", "PPORunResult", "PPOStepMetrics", "PPOTrainer", "UserProgress"]


def iteration_seed(seed: int, user_id: str, step: int) -> int:
    """A 56-bit seed for one user's iteration, unrelated across seeds, users and steps."""
    digest = hashlib.blake2b(f"{seed}/{user_id}/{step}".encode(), digest_size=7).digest()
    return int.from_bytes(digest, "big")


def select(rollout: Rollout, index: Tensor) -> Rollout:
    """The rows ``index`` of a rollout (texts are dropped: the loss does not need them)."""
    return Rollout(rollout.query_ids[index], rollout.query_mask[index],
                   rollout.response_ids[index], rollout.response_mask[index], [], [])


class PPOTrainer:
    """Runs PPO for one user at a time on a shared :class:`PolicyPool`."""

    def __init__(self, pool: PolicyPool, config: PPOConfig) -> None:
        self.pool = pool
        self.config = config
        self._progress: dict[str, UserProgress] = {}
        self._optimizers: dict[str, tuple[str, torch.optim.Optimizer]] = {}
        pool.add_evict_hook(lambda user_id: self._optimizers.pop(user_id, None))
        eos_ids = eos_token_ids(pool.model, pool.tokenizer)
        self.generation = generation_config(pool.tokenizer, eos_ids, config.max_new_tokens,
                                             config.temperature, config.top_p)

    def progress(self, user_id: str) -> UserProgress:
        """The user's cumulative step count and KL coefficient."""
        return self._progress.get(user_id, UserProgress(steps=0, kl_coef=self.config.kl_coef))

    def forget(self, user_id: str) -> None:
        """Drop everything of an erased user: adapter, value head, optimiser (by the evict
        hook), progress."""
        self.pool.evict(user_id)
        self._progress.pop(user_id, None)

    def set_progress(self, user_id: str, progress: UserProgress) -> None:
        """Restore a user's progress (e.g. from a published adapter's manifest)."""
        self._progress[user_id] = progress

    def train_user(
        self,
        user_id: str,
        prompts: Sequence[ChatMessages],
        reward_fn: RewardFn,
        steps: int | None = None,
    ) -> PPORunResult:
        """Run up to ``steps`` PPO iterations (None = no budget) for ``user_id``, continuing
        from its previous calls, until its mean score reaches the threshold or it has
        done ``max_steps`` iterations in total."""
        if not prompts:
            raise ValueError("train_user needs at least one prompt")
        cfg = self.config
        history: list[PPOStepMetrics] = []
        scores_seen: list[float] = []
        kl = math.nan
        reason: StopReason = "budget"
        while steps is None or len(history) < steps:
            progress = self.progress(user_id)
            if progress.steps >= cfg.max_steps:
                reason = "max_steps"
                break
            experience = self._collect(user_id, prompts, reward_fn, progress)  # steps 1-3
            scores_seen.append(experience.score)
            kl = experience.kl
            # 4. stop rule: the current policy already reaches the threshold, keep it as is
            if cfg.reward_threshold is not None and experience.score >= cfg.reward_threshold:
                reason = "threshold"
                break
            history.append(self._learn(user_id, experience, progress))  # steps 5-7
        if reason == "budget" and self.progress(user_id).steps >= cfg.max_steps:
            reason = "max_steps"
        first = scores_seen[0] if scores_seen else math.nan
        last = scores_seen[-1] if scores_seen else math.nan
        result = PPORunResult(user_id, len(history), self.progress(user_id).steps, first, last,
                              kl, reason, tuple(history))
        logger.info("user %s: %s steps (total %s), score %.4f -> %.4f, kl %.4f, stopped: %s",
                    user_id, result.steps, result.total_steps, first, last, kl, reason)
        return result

    def _collect(
        self,
        user_id: str,
        prompts: Sequence[ChatMessages],
        reward_fn: RewardFn,
        progress: UserProgress,
    ) -> Experience:
        """Steps 1-3 of an iteration: rollout, scores, policy/reference evaluation."""
        cfg = self.config
        self.pool.activate(user_id)
        k = cfg.samples_per_prompt
        distinct = cfg.batch_size // k
        # k consecutive rows per prompt: the groups leave_one_out_advantages expects
        batch = [prompts[(progress.steps * distinct + i // k) % len(prompts)]
                 for i in range(cfg.batch_size)]
        return collect(self.pool.model, self.pool.tokenizer, self.generation, batch, reward_fn,
                       iteration_seed(cfg.seed, user_id, progress.steps), cfg.temperature,
                       value_head=self._value_head(user_id),
                       missing_eos_penalty=cfg.missing_eos_penalty)

    def _value_head(self, user_id: str) -> nn.Linear | None:
        """The user's value head where the advantage estimator learns one (GAE)."""
        return self.pool.user(user_id).value_head if self.config.advantage == "gae" else None

    def _learn(self, user_id: str, exp: Experience, progress: UserProgress) -> PPOStepMetrics:
        """Steps 5-7 of an iteration: rewards, GAE, PPO epochs, KL controller."""
        cfg = self.config
        assert exp.old is not None and exp.ref_logprobs is not None  # collected with evaluate
        mask = exp.rollout.response_mask.float()  # (B, R)

        # 5. rewards with the KL penalty; advantages (and returns for the value head)
        returns: Tensor | None = None
        if cfg.advantage == "rloo":
            kl_seq = (ppo_math.per_token_kl(exp.old.logprobs, exp.ref_logprobs) * mask).sum(1)
            seq_rewards = exp.scores - progress.kl_coef * kl_seq  # (B,)
            loo = ppo_math.leave_one_out_advantages(seq_rewards, cfg.samples_per_prompt)  # (B,)
            advantages = loo[:, None] * mask  # (B, R) the same at every token
        else:
            assert exp.old.values is not None  # collected with the value head
            rewards = ppo_math.shaped_rewards(exp.scores, exp.old.logprobs, exp.ref_logprobs,
                                              mask, progress.kl_coef)  # (B, R)
            advantages, returns = ppo_math.gae(rewards, exp.old.values, mask, cfg.gamma,
                                               cfg.lam)
        if cfg.whiten_advantages:
            advantages = ppo_math.masked_whiten(advantages, mask)  # (B, R)

        # 6. PPO epochs over minibatches
        lr = cfg.lr_at(progress.steps)
        losses = self._update(user_id, exp.rollout, exp.old, advantages, returns, exp.seed, lr)

        # 7. adaptive KL controller
        kl_coef = progress.kl_coef
        if cfg.target_kl is not None:
            kl_coef = ppo_math.adaptive_kl_coef(kl_coef, exp.kl, cfg.target_kl, cfg.batch_size,
                                                cfg.kl_horizon)
        self._progress[user_id] = UserProgress(steps=progress.steps + 1, kl_coef=kl_coef)
        metrics = PPOStepMetrics(
            step=progress.steps, score=exp.score, kl=exp.kl, kl_coef=progress.kl_coef, lr=lr,
            entropy=ppo_math.masked_mean(exp.old.entropy, mask).item(),
            response_length=mask.sum(1).mean().item(), **losses,
            step_time_s=time.perf_counter() - exp.started)
        logger.debug("user %s step %s: %s", user_id, progress.steps, metrics)
        return metrics

    def _update(
        self,
        user_id: str,
        rollout: Rollout,
        old: PolicyOutput,
        advantages: Tensor,
        returns: Tensor | None,
        seed: int,
        lr: float,
    ) -> dict[str, float]:
        """Clipped PPO updates of the user's LoRA (and value head, given ``returns``) at
        learning rate ``lr``; mean losses over minibatches."""
        cfg = self.config
        model, head = self.pool.model, self._value_head(user_id)
        optimizer = self._optimizer(user_id)
        for group in optimizer.param_groups:
            group["lr"] = lr
        params = self.pool.trainable_parameters(user_id)
        order = torch.Generator().manual_seed(seed)
        b = rollout.query_ids.shape[0]
        sums = {"pg_loss": 0.0, "v_loss": 0.0, "approx_kl": 0.0, "clipfrac": 0.0}
        n_updates = 0
        for _epoch in range(cfg.ppo_epochs):
            perm = torch.randperm(b, generator=order).to(advantages.device)
            for start in range(0, b, cfg.mini_batch_size):
                mb = perm[start : start + cfg.mini_batch_size]
                mb_mask = rollout.response_mask[mb].float()  # (M, R)
                new = policy_forward(model, head, select(rollout, mb), cfg.temperature)
                pg_loss, clipfrac = ppo_math.clipped_pg_loss(
                    new.logprobs, old.logprobs[mb], advantages[mb], mb_mask, cfg.cliprange)
                v_loss = torch.zeros(())
                if returns is not None:
                    assert new.values is not None and old.values is not None
                    v_loss, _ = ppo_math.clipped_value_loss(
                        new.values, old.values[mb], returns[mb], mb_mask, cfg.cliprange_value)
                loss = pg_loss + cfg.vf_coef * v_loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                with torch.no_grad():
                    approx_kl = ppo_math.approx_kl(new.logprobs, old.logprobs[mb], mb_mask)
                for key, value in (("pg_loss", pg_loss), ("v_loss", v_loss),
                                   ("approx_kl", approx_kl), ("clipfrac", clipfrac)):
                    sums[key] += value.item()
                n_updates += 1
        return {key: total / n_updates for key, total in sums.items()}

    def _optimizer(self, user_id: str) -> torch.optim.Optimizer:
        """The user's AdamW, kept while its adapter stays resident (same adapter load)."""
        adapter_name = self.pool.user(user_id).adapter_name
        cached = self._optimizers.get(user_id)
        if cached is None or cached[0] != adapter_name:
            optimizer = torch.optim.AdamW(self.pool.trainable_parameters(user_id),
                                          lr=self.config.lr,
                                          weight_decay=self.config.weight_decay)
            cached = self._optimizers[user_id] = (adapter_name, optimizer)
        return cached[1]
