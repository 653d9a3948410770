"""One user's training turn: preferences -> reward model -> PPO -> gate -> publish.

Models load lazily on the first turn. The policy is the served base model plus
the user's LoRA (loaded from the user's latest published adapter); PPO runs a
bounded number of iterations per turn; the candidate is published only if it
beats the adapter the user is served (training goes on from a refused
candidate, but it is always compared with what is served) on the user's
held-out prompts and stays within the KL bound.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from services.records import AdapterUpdateRecord
from services.store import AdapterStore
from trainer.config import TrainerConfig
from trainer.evaluate import evaluate
from trainer.examples import ChatMessages, UserExamples, prompt_text
from trainer.metrics import TrainerMetrics
from trainer.policy_pool import PolicyPool
from trainer.ppo import PPOTrainer
from trainer.ppo_config import UserProgress
from trainer.reward_model import PersonalRewardModel
from trainer.rollout import render_prompts
from trainer.shared_sample import SharedSample

log = logging.getLogger(__name__)
Announce = Callable[[AdapterUpdateRecord], None]


@dataclass(frozen=True)
class TurnResult:
    user_id: str
    decision: str
    published_version: str = ""
    reward_before: float = math.nan
    reward_after: float = math.nan
    kl: float = math.nan
    rm_accuracy: float | None = None
    steps: int = 0
    interrupted: bool = False
    rm_accuracy_shared: float | None = None
    """Held-out accuracy of the shared reward model alone on the same pairs."""
    rm_heldout_pairs: int = 0
    """Held-out pairs both accuracies were measured on (0: not measured)."""


class Learner:
    def __init__(self, cfg: TrainerConfig, store: AdapterStore, metrics: TrainerMetrics,
                 announce: Announce) -> None:
        self._cfg = cfg
        self._store = store
        self._metrics = metrics
        self._announce = announce
        self._state = Path(cfg.state_dir)
        # what the shared reward head trains on: a bounded sample of everyone's examples
        self._shared = SharedSample(cfg.reward.shared_max_examples,
                                    cfg.reward.shared_max_examples_per_user, cfg.reward.seed)
        # the weights each user is served (the gate's baseline); training continues
        # from refused candidates, but they are always compared with this
        self._served: dict[str, dict[str, torch.Tensor]] = {}
        self._rm: PersonalRewardModel | None = None
        self._ppo: PPOTrainer | None = None
        self.model_id = cfg.policy_model_id or Path(cfg.policy_model).resolve().name

    # -- lazily loaded models ---------------------------------------------------------------
    def _models(self) -> tuple[PersonalRewardModel, PPOTrainer]:
        if self._rm is None or self._ppo is None:
            heads = self._state / "reward-heads"
            heads.mkdir(parents=True, exist_ok=True)
            rm = PersonalRewardModel(
                self._cfg.reward,
                user_source=lambda u: (heads / f"{u}.safetensors") if (
                    heads / f"{u}.safetensors").exists() else None,
                on_evict=lambda u: rm.save_user(u, heads / f"{u}.safetensors"))
            pool = PolicyPool.from_pretrained(self._cfg.policy_model, self._cfg.ppo,
                                              adapter_source=self._latest_adapter)
            pool.add_evict_hook(lambda u: self._served.pop(u, None))  # reloads the published
            self._rm, self._ppo = rm, PPOTrainer(pool, self._cfg.ppo)
        return self._rm, self._ppo

    def _latest_adapter(self, user_id: str) -> Path | None:
        version = self._store.latest(user_id)
        return self._store.version_dir(user_id, version) if version else None

    # -- the turn ---------------------------------------------------------------------------
    def turn(self, user_id: str, ex: UserExamples,
             should_stop: Callable[[], bool] = lambda: False) -> TurnResult:
        """One turn; ``should_stop`` is checked between PPO iterations, and an
        interrupted turn publishes nothing (it is simply run again later)."""
        start = time.perf_counter()
        self._metrics.pairs.inc(len(ex.data.pairs))
        if len(ex.pairs) + len(ex.thumbs) < self._cfg.schedule.min_pairs:
            return TurnResult(user_id, "waiting: too little preference data")
        rm, ppo = self._models()
        # 1. reward model: the shared part on everyone's data, then this user's part
        self._shared.put(user_id, ex.pairs, ex.thumbs)
        shared = rm.train_shared(*self._shared.examples())
        personal = rm.train_user(user_id, ex.pairs, ex.thumbs)
        self._metrics.rm_loss.labels("shared").set(shared.loss)
        self._metrics.rm_loss.labels("user").set(personal.loss)
        if personal.heldout_accuracy is not None:
            self._metrics.rm_accuracy.observe(personal.heldout_accuracy)
        reward_fn = self._reward_fn(rm, ppo, user_id, ex.train_prompts + ex.eval_prompts)
        # 2. PPO from the user's current adapter, on the user's own prompts
        self._restore_progress(ppo, user_id)
        ppo.pool.activate(user_id)
        served = self._served.setdefault(user_id, _snapshot(ppo.pool, user_id))
        steps = 0
        for _ in range(self._cfg.schedule.ppo_steps_per_turn):
            if should_stop():
                return TurnResult(user_id, "interrupted", interrupted=True)
            run = ppo.train_user(user_id, ex.train_prompts, reward_fn, steps=1)
            steps += run.steps
            for step in run.history:
                self._metrics.ppo_steps.inc()
                self._metrics.ppo_reward.set(step.score)
                self._metrics.ppo_kl.set(step.kl)
                self._metrics.ppo_clipfrac.set(step.clipfrac)
            if run.stopped_reason != "budget":  # the seed's stop rule ended the run
                break
        # 3. gate: the candidate vs the adapter the user is served, on held-out prompts
        new_score, new_kl = evaluate(ppo, user_id, ex.eval_prompts, reward_fn,
                                     self._cfg.publish.eval_samples)
        candidate = _snapshot(ppo.pool, user_id)
        _restore(ppo.pool, user_id, served)
        old_score, _ = evaluate(ppo, user_id, ex.eval_prompts, reward_fn,
                                self._cfg.publish.eval_samples, with_kl=False)
        _restore(ppo.pool, user_id, candidate)
        result = self._decide(user_id, ex, steps, old_score, new_score, new_kl,
                              personal.heldout_accuracy, ppo)
        result = replace(result, rm_accuracy_shared=personal.heldout_accuracy_shared,
                         rm_heldout_pairs=personal.n_heldout_pairs)
        if result.published_version:
            self._served[user_id] = candidate
        self._metrics.turn_seconds.observe(time.perf_counter() - start)
        self._metrics.adapters_in_memory.set(len(ppo.pool.resident_users()))
        return result

    def _reward_fn(self, rm: PersonalRewardModel, ppo: PPOTrainer, user_id: str,
                   prompts: Sequence[ChatMessages]) -> Callable[..., torch.Tensor]:
        """Scores rendered prompts with the reward model's prompt format."""
        as_text = dict(zip(render_prompts(ppo.pool.tokenizer, prompts),
                           [prompt_text(p) for p in prompts], strict=True))
        return lambda rendered, completions: rm.score(
            user_id, [as_text.get(r, r) for r in rendered], completions)

    def _restore_progress(self, ppo: PPOTrainer, user_id: str) -> None:
        if ppo.progress(user_id).steps or not (version := self._store.latest(user_id)):
            return
        m = self._store.manifest(user_id, version)
        ppo.set_progress(user_id, UserProgress(
            steps=m.steps, kl_coef=float(m.metrics.get("kl_coef", self._cfg.ppo.kl_coef))))

    def _decide(self, user_id: str, ex: UserExamples, steps: int, old: float, new: float,
                kl: float, accuracy: float | None, ppo: PPOTrainer) -> TurnResult:
        gate = self._cfg.publish
        if steps == 0:
            reason, decision = "no_step", "kept: no PPO step (stop rule reached)"
        elif not new > old + gate.min_improvement:
            reason = "no_gain"
            decision = f"kept: candidate reward {new:.3f} does not beat {old:.3f}"
        elif not kl <= gate.kl_bound:
            reason, decision = "kl_bound", f"kept: KL {kl:.3f} over the bound {gate.kl_bound}"
        else:
            version = self._publish(user_id, ex, steps, old, new, kl, ppo)
            self._metrics.published.inc()
            return TurnResult(user_id, f"published {version}", version, old, new, kl,
                              accuracy, steps)
        self._metrics.refused.labels(reason).inc()  # one of metrics.REFUSAL_REASONS
        return TurnResult(user_id, decision, "", old, new, kl, accuracy, steps)

    def _publish(self, user_id: str, ex: UserExamples, steps: int, old: float, new: float,
                 kl: float, ppo: PPOTrainer) -> str:
        progress = ppo.progress(user_id)
        with tempfile.TemporaryDirectory() as tmp:
            ppo.pool.export_adapter(user_id, Path(tmp))
            manifest = self._store.publish(
                user_id, Path(tmp), self.model_id, steps=progress.steps,
                feedback_count=ex.feedback_events, reward_before=old, reward_after=new, kl=kl,
                metrics={"kl_coef": progress.kl_coef, "turn_steps": steps})
        self._announce(AdapterUpdateRecord(
            user_id=user_id, version=manifest.version, sha256=manifest.sha256,
            base_model=manifest.base_model, created_at=time.time(),
            metrics={"reward_before": old, "reward_after": new, "kl": kl}))
        return manifest.version

    def status(self, user_id: str, ex: UserExamples, result: TurnResult) -> dict[str, Any]:
        """The report GetUserStatus serves for the user."""
        return {
            "feedback_events": ex.feedback_events, "preference_pairs": len(ex.data.pairs),
            "thumbs_labels": len(ex.data.thumbs),
            "reward_model_accuracy": _finite(result.rm_accuracy),
            "reward_model_shared_accuracy": _finite(result.rm_accuracy_shared),
            "reward_model_heldout_pairs": result.rm_heldout_pairs,
            "last_reward_before": _finite(result.reward_before),
            "last_reward_after": _finite(result.reward_after), "last_kl": _finite(result.kl),
            "last_publish_decision": result.decision,
            "labelers": [asdict(s) for s in ex.data.labelers.values()],
            "updated_at": time.time(),
        }


def _finite(x: float | None) -> float:
    return 0.0 if x is None or not math.isfinite(x) else float(x)


def _snapshot(pool: PolicyPool, user_id: str) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in pool.adapter_parameters(user_id).items()}


def _restore(pool: PolicyPool, user_id: str, snap: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for k, p in pool.adapter_parameters(user_id).items():
            p.copy_(snap[k])
