"""One user's training turn: preferences -> reward model -> PPO -> gate -> publish.

Models load lazily on the first turn. The policy is the served base model plus
the user's LoRA (loaded from the user's latest published adapter, or from the
unpublished weights kept when the user was last evicted: ``trainer.loop.working``); PPO runs a
bounded number of iterations per turn; the candidate is published only if it
beats the adapter the user is served (training goes on from a refused
candidate, but it is always compared with what is served) on the user's
held-out prompts and stays within the KL bound. A candidate over the KL bound is
dropped: the user restarts from the served adapter. With ``PublishConfig.kl_stop_share``
set, a turn's PPO also stops early once a rollout's KL to the base model passes the
turn's limit, going back to the last iterate within it. Both multiply the user's KL
coefficient by ``PublishConfig.kl_backoff``.

Publishing is fenced: the candidate names the version its weights were loaded
from (or last published as); when another trainer published the user meanwhile
(a rebalance moved the user, or this process is a zombie) the store refuses it,
the turn is dropped and the user is reloaded from the latest version.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from services.contract.status import LabelerReport, TrainerReport, finite
from services.contract.store import AdapterStore, StaleParent
from trainer.config import TrainerConfig
from trainer.data.chat import ChatMessages
from trainer.data.examples import UserExamples
from trainer.loop.gate import (
    AdapterSample,
    GateSamples,
    Snapshot,
    compare,
    held_out_sample,
    rendered_reward,
    restore,
    snapshot,
    verdict,
)
from trainer.loop.publish import Announce, Publisher
from trainer.loop.working import WorkingCopies, differs, served_weights
from trainer.metrics import TrainerMetrics
from trainer.ppo.config import UserProgress
from trainer.ppo.policies import PolicyPool
from trainer.ppo.trainer import PPOTrainer
from trainer.reward.config import TrainMetrics
from trainer.reward.model import PersonalRewardModel
from trainer.reward.shared_sample import SharedSample

log = logging.getLogger(__name__)


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
    """Held-out pairs the accuracies were measured on (0: not measured)."""
    rm_accuracy_judge: float | None = None
    """Held-out accuracy of the user's judge head (the gate's scorer)."""
    judge_before: float = math.nan
    """The served adapter's mean judge reward on the gate's prompts."""
    judge_after: float = math.nan
    """The candidate's mean judge reward on the same prompts."""
    ppo_stop: str = ""
    """Why the turn's PPO ended: "budget" (the turn's iterations), "kl" (past the turn's KL
    limit, ``PublishConfig.kl_stop_share``), "threshold" or
    "max_steps" (the seed's stop rule); "" when the turn stopped before the gate
    (waiting for data)."""
    ppo_total_steps: int = 0
    """The user's PPO iterations in total after the turn (0 when PPO did not run)."""


class Learner:
    def __init__(self, cfg: TrainerConfig, store: AdapterStore, metrics: TrainerMetrics,
                 announce: Announce) -> None:
        self._cfg = cfg
        self._store = store
        self._metrics = metrics
        self._heads_dir = Path(cfg.state_dir) / "reward-heads"
        self.model_id = cfg.policy_model_id or Path(cfg.policy_model).resolve().name
        self._publisher = Publisher(store, announce, self.model_id)
        # what the shared reward head trains on: a bounded sample of everyone's examples
        self._shared = SharedSample(cfg.reward.shared_max_examples,
                                    cfg.reward.shared_max_examples_per_user, cfg.reward.seed)
        # the weights each user is served (the gate's baseline); training continues
        # from refused candidates, but they are always compared with this
        self._served: dict[str, dict[str, torch.Tensor]] = {}
        # the store version this process's state of each user descends from: the one
        # its weights were loaded from or last published as (the parent a publish names)
        self._parents: dict[str, str] = {}
        # the served adapter's gate completions, reused while its weights are unchanged
        self._gate_samples = GateSamples()
        self._rm: PersonalRewardModel | None = None
        # each user's last reward-model fit in this process (a turn without new data
        # reuses the fitted heads and reports these accuracies)
        self._fits: dict[str, TrainMetrics] = {}
        self._ppo: PPOTrainer | None = None
        # unpublished weights of evicted users (trainer.loop.working), and the store
        # version each user resumed from a copy descends from (its gate baseline)
        self._working = WorkingCopies(Path(cfg.state_dir) / "working-adapters")
        self._resumed: dict[str, Path | None] = {}

    # -- lazily loaded models ---------------------------------------------------------------
    def _models(self) -> tuple[PersonalRewardModel, PPOTrainer]:
        if self._rm is None or self._ppo is None:
            self._heads_dir.mkdir(parents=True, exist_ok=True)
            rm = PersonalRewardModel(
                self._cfg.reward,
                user_source=lambda u: self._head_file(u) if self._head_file(u).exists()
                else None,
                on_evict=lambda u: rm.save_user(u, self._head_file(u)))
            pool = PolicyPool.from_pretrained(self._cfg.policy_model, self._cfg.ppo,
                                              adapter_source=self._latest_adapter)
            pool.add_evict_hook(self._on_evict)
            self._rm, self._ppo = rm, PPOTrainer(pool, self._cfg.ppo)
        return self._rm, self._ppo

    def _on_evict(self, user_id: str) -> None:
        """An evicted user's weights ahead of its served ones are kept on disk (the next
        load resumes from them); otherwise the next load is its latest version."""
        assert self._ppo is not None
        served = self._served.get(user_id)
        if served is not None and differs(self._ppo.pool, user_id, served):
            self._working.save(self._ppo.pool, user_id, self._parents.get(user_id, ""))
        elif user_id not in self._resumed:  # (a copy it was loaded from, with no turn
            self._working.discard(user_id)   # since, stays: it is still the user's state)
        self._drop_served(user_id)

    def _drop_served(self, user_id: str) -> None:
        """Forget the user's gate baseline: its weights and their gate completions."""
        self._served.pop(user_id, None)
        self._gate_samples.forget(user_id)

    def _head_file(self, user_id: str) -> Path:
        """Where an evicted user's reward heads are kept between turns."""
        return self._heads_dir / f"{user_id}.safetensors"

    def forget(self, user_id: str) -> None:
        """Drop everything this process holds of an erased user: its reward heads (in
        memory and on disk), its examples in the shared reward model's sample, every
        cached encoding (they may hold its texts), and its policy adapter, value head,
        optimiser and progress. The shared reward model keeps no example of the user
        from now on; what its earlier steps learnt from the user is not unlearnt (it
        fades as it trains on the others; docs/operations.md)."""
        for kept in (self._fits, self._parents, self._resumed):
            kept.pop(user_id, None)
        self._drop_served(user_id)
        self._working.discard(user_id)
        self._shared.remove(user_id)
        self._head_file(user_id).unlink(missing_ok=True)
        if self._rm is not None:
            self._rm.users.forget(user_id)
            self._rm.encoder.clear_cache()
        if self._ppo is not None:
            self._ppo.forget(user_id)

    def _latest_adapter(self, user_id: str) -> Path | None:
        """The pool's adapter source: the user's unpublished weights descending from its
        latest version when it has them, else that version; the version is recorded as
        the parent."""
        version = self._store.latest(user_id)
        self._parents[user_id] = version or ""
        published = self._store.version_dir(user_id, version) if version else None
        working = self._working.source(user_id, version or "")
        if working is None:
            self._resumed.pop(user_id, None)
            return published
        self._resumed[user_id] = published
        log.info("user %s: resuming unpublished weights from %s", user_id, working)
        return working

    def _reload_if_superseded(self, ppo: PPOTrainer, user_id: str) -> None:
        """A user whose latest version is not the one this process's state descends from
        was published by another trainer (e.g. while a rebalance gave it away)."""
        known = self._parents.get(user_id)
        if known is not None and known != (self._store.latest(user_id) or ""):
            log.info("user %s: a newer version was published elsewhere; reloading", user_id)
            self._reload(ppo, user_id)

    def _reload(self, ppo: PPOTrainer, user_id: str) -> None:
        """Continue the user from its latest published version: its weights (when
        resident; otherwise they load on activation), progress and gate baseline."""
        self._drop_served(user_id)
        self._working.discard(user_id)
        self._parents.pop(user_id, None)
        ppo.set_progress(user_id, UserProgress(steps=0, kl_coef=self._cfg.ppo.kl_coef))
        if user_id in ppo.pool.resident_users():  # replaced in place, no evict hooks
            ppo.pool.load_adapter(user_id, self._latest_adapter(user_id))

    # -- the turn ---------------------------------------------------------------------------
    def turn(self, user_id: str, ex: UserExamples,
             should_stop: Callable[[], bool] = lambda: False,
             refit_reward: bool = True, known_erasure: float = 0.0) -> TurnResult:
        """One turn; ``should_stop`` is checked between PPO iterations and once more
        before publishing (e.g. shutdown, or the user's partition was revoked), and an
        interrupted turn publishes nothing (it is simply run again later).
        ``refit_reward=False`` (no new data) reuses the user's fitted reward heads,
        unless this process has not fitted them yet. ``known_erasure``: the user's
        latest erasure ``ex`` postdates; the store refuses the candidate when the user
        was erased after it (the turn is then dropped like a fenced one)."""
        start = time.perf_counter()
        self._metrics.pairs.inc(len(ex.data.pairs))
        if len(ex.pairs) + len(ex.thumbs) < self._cfg.schedule.min_pairs:
            return TurnResult(user_id, "waiting: too little preference data")
        rm, ppo = self._models()
        # 1. reward model: the shared part on everyone's data, then this user's part
        #    (only on new data: otherwise the fitted heads stand in for the user)
        personal = None if refit_reward else self._fits.get(user_id)
        if personal is None:
            self._shared.put(user_id, ex.pairs, ex.thumbs)
            shared = rm.train_shared(*self._shared.examples())
            personal = self._fits[user_id] = rm.train_user(user_id, ex.pairs, ex.thumbs)
            self._metrics.rm_loss.labels("shared").set(shared.loss)
            self._metrics.rm_loss.labels("user").set(personal.loss)
            if personal.heldout_accuracy is not None:
                self._metrics.rm_accuracy.observe(personal.heldout_accuracy)
        reward_fn = rendered_reward(rm.score, ppo, user_id, ex.train_prompts)
        # 2. PPO from the user's current adapter, on the user's own prompts
        self._reload_if_superseded(ppo, user_id)
        self._restore_progress(ppo, user_id)
        ppo.pool.activate(user_id)
        served = self._served.get(user_id)
        if served is None:  # the gate's baseline: the served version's weights
            served = self._served[user_id] = (
                served_weights(ppo.pool, user_id, self._resumed.pop(user_id))
                if user_id in self._resumed else snapshot(ppo.pool, user_id))
        ran = self._ppo_iterations(ppo, user_id, ex.train_prompts, reward_fn, should_stop)
        if ran is None:
            return TurnResult(user_id, "interrupted", interrupted=True)
        steps, stop = ran
        # 3. gate: the candidate vs the adapter the user is served, on held-out prompts,
        #    judged by the user's judge head (PPO optimised the policy head, not this one)
        gate_prompts = held_out_sample(user_id, ex.eval_prompts, self._cfg.publish.eval_prompts)
        if not gate_prompts:
            return TurnResult(user_id, "waiting: no held-out prompts for the gate yet",
                              steps=steps, ppo_total_steps=ppo.progress(user_id).steps)
        judge_fn = rendered_reward(rm.judge, ppo, user_id, gate_prompts)
        optimised_fn = rendered_reward(rm.score, ppo, user_id, gate_prompts)
        old, new, candidate = compare(ppo, user_id, gate_prompts, judge_fn, optimised_fn,
                                      self._cfg.publish, served, self._gate_samples)
        if should_stop():  # e.g. the partition moved during the gate: publish nothing
            return TurnResult(user_id, "interrupted", interrupted=True)
        result = self._decide(user_id, ex, steps, old, new, ppo, known_erasure)
        result = replace(result, rm_accuracy=personal.heldout_accuracy,
                         rm_accuracy_shared=personal.heldout_accuracy_shared,
                         rm_accuracy_judge=personal.heldout_accuracy_judge,
                         rm_heldout_pairs=personal.n_heldout_pairs,
                         ppo_stop=stop, ppo_total_steps=ppo.progress(user_id).steps)
        if result.published_version:
            self._served[user_id] = candidate
            self._working.discard(user_id)
            self._parents[user_id] = result.published_version
        self._metrics.turn_seconds.observe(time.perf_counter() - start)
        self._metrics.adapters_in_memory.set(len(ppo.pool.resident_users()))
        return result

    def _ppo_iterations(self, ppo: PPOTrainer, user_id: str,
                        prompts: Sequence[ChatMessages], reward_fn: Callable[..., torch.Tensor],
                        should_stop: Callable[[], bool]) -> tuple[int, str] | None:
        """The turn's PPO iterations from the user's current adapter: (iterations run, why
        they ended: "budget", "kl", or the seed's "threshold" / "max_steps"); None when
        ``should_stop`` interrupted them. Each rollout measures the KL of the adapter its
        iteration began from; past the turn's KL limit (``PublishConfig.kl_stop_share``),
        the adapter goes back to the last iterate measured within it."""
        share = self._cfg.publish.kl_stop_share
        watched = share is not None  # off: no snapshot per iteration
        limit = math.inf if share is None else share * self._cfg.publish.kl_bound
        within: Snapshot | None = None  # the last iterate whose rollout KL was within
        steps, stop = 0, "budget"
        for i in range(self._turn_length(user_id)):
            if should_stop():
                return None
            began = snapshot(ppo.pool, user_id) if watched else None
            run = ppo.train_user(user_id, prompts, reward_fn, steps=1)
            steps += run.steps
            for step in run.history:
                self._metrics.ppo_steps.inc()
                self._metrics.ppo_reward.set(step.score)
                self._metrics.ppo_kl.set(step.kl)
                self._metrics.ppo_clipfrac.set(step.clipfrac)
            stop = run.stopped_reason
            if stop != "budget":  # the seed's stop rule ended the run
                break
            if i == 0:  # the turn may begin past the limit; it must not end further out
                limit = max(limit, run.kl)
            elif run.kl > limit and within is not None:
                restore(ppo.pool, user_id, within)
                self._raise_kl_coef(ppo, user_id, f"PPO went past the turn's KL limit "
                                    f"({run.kl:.1f} > {limit:.1f} nats)")
                self._metrics.ppo_kl_stops.inc()
                return steps, "kl"
            within = began
        return steps, stop

    def _turn_length(self, user_id: str) -> int:
        """PPO iterations of the user's turn: ``ppo_steps_until_published`` until the user
        has a published adapter (when set), ``ppo_steps_per_turn`` after."""
        schedule = self._cfg.schedule
        if schedule.ppo_steps_until_published and not self._store.latest(user_id):
            return schedule.ppo_steps_until_published
        return schedule.ppo_steps_per_turn

    def _restore_progress(self, ppo: PPOTrainer, user_id: str) -> None:
        if ppo.progress(user_id).steps or not (version := self._store.latest(user_id)):
            return
        m = self._store.manifest(user_id, version)
        ppo.set_progress(user_id, UserProgress(
            steps=m.steps, kl_coef=float(m.metrics.get("kl_coef", self._cfg.ppo.kl_coef))))

    def _decide(self, user_id: str, ex: UserExamples, steps: int, old: AdapterSample,
                new: AdapterSample, ppo: PPOTrainer, known_erasure: float) -> TurnResult:
        judged = verdict(self._cfg.publish, steps, old, new)
        result = TurnResult(user_id, judged.decision, "", old.optimised, new.optimised, new.kl,
                            steps=steps, judge_before=old.judge, judge_after=new.judge)
        if not judged.publish:
            self._metrics.refused.labels(judged.reason).inc()  # one of REFUSAL_REASONS
            if new.kl > self._cfg.publish.kl_bound:
                self._back_off(ppo, user_id)
            return result
        progress = ppo.progress(user_id)
        with tempfile.TemporaryDirectory() as tmp:
            ppo.pool.export_adapter(user_id, Path(tmp))
            try:
                version = self._publisher.publish(
                    user_id, Path(tmp), parent_version=self._parents.get(user_id, ""),
                    steps=progress.steps, feedback_count=ex.feedback_events,
                    reward_before=old.optimised, reward_after=new.optimised, kl=new.kl,
                    metrics={"kl_coef": progress.kl_coef, "turn_steps": steps,
                             "judge_before": old.judge, "judge_after": new.judge},
                    known_erasure=known_erasure)
            except StaleParent as exc:
                log.warning("publish fenced, turn dropped: %s", exc)
                self._metrics.publish_fenced.inc()
                self._reload(ppo, user_id)
                return TurnResult(user_id, f"fenced: {exc}", interrupted=True)
        self._metrics.published.inc()
        return replace(result, decision=f"published {version}", published_version=version)

    def _back_off(self, ppo: PPOTrainer, user_id: str) -> None:
        """A candidate over the KL bound: the user restarts from the served adapter with a
        KL coefficient ``kl_backoff`` times larger (``PublishConfig.kl_backoff``)."""
        if self._cfg.publish.kl_backoff == 1.0:
            return
        restore(ppo.pool, user_id, self._served[user_id])
        self._raise_kl_coef(ppo, user_id, "candidate over the KL bound; restarting from the "
                            "served adapter")

    def _raise_kl_coef(self, ppo: PPOTrainer, user_id: str, why: str) -> None:
        """Multiply the user's KL coefficient by ``PublishConfig.kl_backoff``."""
        progress = ppo.progress(user_id)
        kl_coef = progress.kl_coef * self._cfg.publish.kl_backoff
        ppo.set_progress(user_id, replace(progress, kl_coef=kl_coef))
        log.info("user %s: %s; KL coefficient now %.4g", user_id, why, kl_coef)

    def status(self, user_id: str, ex: UserExamples, result: TurnResult) -> TrainerReport:
        """The report GetUserStatus serves for the user."""
        return TrainerReport(
            feedback_events=ex.feedback_events, preference_pairs=len(ex.data.pairs),
            thumbs_labels=len(ex.data.thumbs),
            reward_model_accuracy=finite(result.rm_accuracy),
            reward_model_shared_accuracy=finite(result.rm_accuracy_shared),
            reward_model_heldout_pairs=result.rm_heldout_pairs,
            reward_model_judge_accuracy=finite(result.rm_accuracy_judge),
            last_reward_before=finite(result.reward_before),
            last_reward_after=finite(result.reward_after), last_kl=finite(result.kl),
            last_judge_before=finite(result.judge_before),
            last_judge_after=finite(result.judge_after),
            last_publish_decision=result.decision,
            labelers=tuple(LabelerReport(s.labeler_id, s.agreement, s.judgements, s.flagged)
                           for s in ex.data.labelers.values()),
            updated_at=time.time())
