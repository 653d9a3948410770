"""The continuous trainer (``python -m trainer.loop.service``).

An ingest thread journals ``generations`` and ``feedback`` (see consumer.py);
the main loop picks the next user among the partitions this process owns
(schedule.py: users with new feedback first; with spare capacity, users still
below the seed's stop rule without it), runs that user's turn (learner.py; the
reward model is refitted only on new feedback), records the outcome and the
user's training state for GetUserStatus, and repeats. When nobody is due, a user with
new (not yet due) feedback still has its served version reviewed online (rollback.py),
so that a rollback does not wait for a training turn. SIGTERM/SIGINT stop it
between PPO iterations, and so does the revocation of the user's partition
(rebalance); a turn that raises quarantines its user with backoff instead of
ending the process. Before each pick, the erasures the ingest thread journaled are
carried out: the user's state in this process and its files in the store go, and
the replicas are told to serve the base model.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

from kafka import KafkaProducer
from prometheus_client import start_http_server

from services.contract import config as config_mod
from services.contract.records import AdapterUpdateRecord
from services.contract.status import TrainerReport
from services.contract.store import AdapterStore
from trainer.config import TrainerConfig
from trainer.data.examples import build_examples
from trainer.ingest.consumer import Ingest
from trainer.ingest.journal import Journal
from trainer.loop.learner import Learner
from trainer.loop.publish import Publisher
from trainer.loop.rollback import OnlineReviewer
from trainer.loop.schedule import (
    Quarantine,
    TrainingState,
    after_failure,
    due_users,
    pick_next,
    training_state,
)
from trainer.metrics import TrainerMetrics

log = logging.getLogger("personalize.trainer")


def journal_path(cfg: TrainerConfig) -> Path:
    return Path(cfg.state_dir) / "journal.sqlite"


class TrainerService:
    def __init__(self, cfg: TrainerConfig) -> None:
        self.cfg = cfg
        k = cfg.kafka
        self.metrics = TrainerMetrics(generations_topic=k.generations_topic,
                                      feedback_topic=k.feedback_topic)
        self.store = AdapterStore(cfg.adapter_store)
        self.ingest = Ingest(cfg, Journal(journal_path(cfg), k.generations_topic,
                                          k.feedback_topic), self.metrics)
        self.journal = Journal(journal_path(cfg), k.generations_topic, k.feedback_topic)
        self._producer: KafkaProducer | None = None
        self.learner = Learner(cfg, self.store, self.metrics, self._announce)
        self.online = OnlineReviewer(cfg.online, self.store, Publisher(
            self.store, self._announce, self.learner.model_id), self.metrics)
        self.stop_event = threading.Event()
        self._last_trained: dict[str, float] = {}
        self._quarantine: dict[str, Quarantine] = {}
        # the training state of each user this process completed a turn of (users it
        # has not, e.g. after a restart, are tried once as "training")
        self._states: dict[str, TrainingState] = {}
        # the new-feedback count of each user at its last review outside a turn
        self._reviewed: dict[str, int] = {}

    def _announce(self, record: AdapterUpdateRecord) -> None:
        if self._producer is None:
            self._producer = KafkaProducer(bootstrap_servers=self.cfg.kafka.bootstrap_servers,
                                           acks="all", enable_idempotence=True,
                                           client_id=f"{self.cfg.kafka.client_id}-publisher")
        self._producer.send(self.cfg.kafka.adapter_updates_topic, key=record.user_id.encode(),
                            value=record.to_json()).get(timeout=30)

    def run(self) -> int:
        self.ingest.start()
        while not self.stop_event.is_set():
            if not self.ingest.is_alive():
                log.error("ingest thread died: %r", self.ingest.error)
                return 1
            if not self.cfg.train or not self.step():
                self.stop_event.wait(self.cfg.schedule.idle_sleep_s)
        self.ingest.stop()
        self.ingest.join(timeout=10)
        if self._producer is not None:
            self._producer.close(timeout=10)
        return 0

    def step(self) -> bool:
        """Run one user's turn; False when nobody is due or still training.

        A turn that raises does not stop the loop: it is logged with the user,
        counted, and the user is quarantined with exponential backoff
        (schedule.py) while the others keep training.
        """
        self._apply_erasures()
        pending = self.journal.pending_users(self.ingest.assigned)
        self.metrics.users_tracked.set(self.journal.user_count())
        now = time.monotonic()
        owned = self.journal.trained_users(self.ingest.assigned)
        # users an operator pinned or reset get no turn and no review (their feedback
        # stays new until they are unpinned)
        held = {u for u in set(pending) | owned if self.store.read_control(u).held}
        pending = {u: n for u, n in pending.items() if u not in held}
        owned -= held
        self._states = {u: s for u, s in self._states.items() if u in owned}
        states = {u: self._states.get(u, "training") for u in owned}
        # quarantines are kept through rebalances (the assignment may be empty for a
        # moment); a user leaves it by a completed turn, or when released or erased
        self.metrics.users_quarantined.set(len(self._quarantine))
        user = pick_next(pending, self._last_trained, self.cfg.schedule, self._quarantine, now,
                         states)
        if user is None:
            return self._review_waiting(pending)
        try:
            new = pending.get(user)
            self._turn(user, oldest_new=new[1] if new else None)
        except Exception as exc:
            self._quarantine[user] = q = after_failure(self._quarantine.get(user), now,
                                                       self.cfg.schedule)
            self.metrics.turn_failures.inc()
            self.metrics.users_quarantined.set(len(self._quarantine))
            log.exception("user %s: turn failed (%d in a row); quarantined for %.0f s",
                          user, q.failures, q.until - now)
            self._report_failure(user, exc, q.until - now)
            return True
        self._quarantine.pop(user, None)
        self.metrics.users_quarantined.set(len(self._quarantine))
        return True

    def _apply_erasures(self) -> None:
        """Forget the users of partitions this process lost, and each user whose erasure
        the journal holds but this process has not carried out: its rows are already
        gone from the journal (the same transaction as the tombstone); here go its
        parameters and schedule state, and its store files again (idempotent: a version
        a turn published while the erasure was on its way is deleted too)."""
        for user in self.ingest.take_released():  # another trainer owns them now
            self._forget(user)
        for user, erased_at in self.journal.erasures_to_apply():
            self._forget(user)
            try:
                files = self.store.erase(user, erased_at)
                self._announce(AdapterUpdateRecord(
                    user_id=user, version="", sha256="", base_model=self.learner.model_id,
                    created_at=time.time(), control=True))
            except Exception:  # the store or broker failing: tried again next step
                log.exception("user %s: erasure not finished; retrying", user)
                continue
            self.journal.mark_erasure_applied(user, erased_at)
            self.metrics.erasures.inc()
            log.info("user %s: erased (store: %d versions%s deleted here)", user,
                     len(files.versions), ", status" if files.status else "")

    def _forget(self, user: str) -> None:
        """Drop what this process holds of a user (parameters, caches, schedule state)."""
        self.learner.forget(user)
        self.online.forget(user)
        for kept in (self._last_trained, self._quarantine, self._states, self._reviewed):
            kept.pop(user, None)

    def _someone_due(self) -> bool:
        """Whether a user's new feedback made it due (and no operator holds it): a turn
        without new feedback then gives way between two PPO iterations. Nothing is lost:
        the iterations it took stay in the user's weights, and its next turn goes on
        from them."""
        pending = self.journal.pending_users(self.ingest.assigned)
        due = due_users(pending, self.cfg.schedule, self._quarantine, time.monotonic())
        return any(not self.store.read_control(u).held for u in due)

    def _turn(self, user: str, oldest_new: float | None) -> None:
        """The user's turn; stopped between PPO iterations (and before publishing) on
        shutdown or when the user's partition is no longer this process's.

        ``oldest_new`` is the age of the user's oldest new feedback event, None when it
        has none: the reward model is then not refitted, and nothing is marked trained
        (feedback that arrived meanwhile stays new for the next turn)."""
        partition = self.journal.partition_of(user)
        self._reviewed.pop(user, None)
        known_erasure = self.journal.erased_at(user)  # before the data it postdates
        joined = self.journal.joined(user)
        online = self.online.review(user, joined)  # may roll the served version back
        ex = build_examples(user, joined, self.cfg.preferences,
                            self.cfg.reward.heldout_fraction, self.cfg.reward.seed)
        result = self.learner.turn(user, ex, lambda: (
            self.stop_event.is_set() or not self.ingest.owns(partition)
            or (oldest_new is None and self._someone_due())),
            refit_reward=oldest_new is not None, known_erasure=known_erasure)
        if result.interrupted:
            self.metrics.turns_interrupted.inc()
            log.info("user %s: %s%s; turn dropped", user, result.decision,
                     "" if self.ingest.owns(partition) else
                     f" (partition {partition} is no longer owned)")
            return
        state = self._states[user] = training_state(result.ppo_stop, self.cfg.schedule)
        ppo = self.cfg.ppo
        report = online.annotate(self.learner.status(user, ex, result))
        self.store.write_status(user, replace(
            report, ppo_steps_total=result.ppo_total_steps, ppo_max_steps=ppo.max_steps,
            reward_threshold=ppo.reward_threshold, training_state=state), known_erasure)
        if oldest_new is not None:
            self.journal.mark_trained(user, ex.through_seq)
        self._last_trained[user] = time.monotonic()
        if result.published_version and oldest_new is not None:
            self.metrics.feedback_to_publish.observe(oldest_new)
        log.info("user %s: %s (%s, %d PPO steps in total)", user, result.decision, state,
                 result.ppo_total_steps)

    def _review_waiting(self, pending: dict[str, tuple[int, float]]) -> bool:
        """Review the served version of each user whose new feedback changed since its
        last review but is not yet due for a turn (the interleaved comparisons it holds
        may call for a rollback); its report gets the online figures. True when any was
        reviewed."""
        reviewed = False
        self._reviewed = {u: n for u, n in self._reviewed.items() if u in pending}
        for user, (n, _age) in sorted(pending.items()):
            if user in self._quarantine or self._reviewed.get(user) == n:
                continue
            self._reviewed[user] = n
            reviewed = True
            try:
                known_erasure = self.journal.erased_at(user)
                online = self.online.review(user, self.journal.joined(user))
                previous = self.store.read_status(user)
                if previous is None and not (online.rollback or online.vs_base.version):
                    continue  # nothing to report of a user without an adapter
                report = previous or empty_report()
                self.store.write_status(user, replace(online.annotate(report),
                                                      updated_at=time.time()), known_erasure)
            except Exception:  # a review failing must not end the loop
                log.exception("user %s: online review failed", user)
        return reviewed

    def _report_failure(self, user: str, exc: Exception, wait_s: float) -> None:
        """Tell GetUserStatus why the user's adapter stopped improving (best effort)."""
        try:
            previous = self.store.read_status(user)
            error = f"{type(exc).__name__}: {exc}"[:200]
            decision = f"failed: {error}; next try in {wait_s:.0f} s"
            report = previous or replace(empty_report(), training_state="training")
            self.store.write_status(user, replace(report, last_publish_decision=decision,
                                                  updated_at=time.time()),
                                    self.journal.erased_at(user))
        except Exception:  # the store itself failing must not end the loop either
            log.warning("user %s: status not written", user, exc_info=True)


def empty_report() -> TrainerReport:
    """The report of a user the trainer reviewed but has not trained yet."""
    return TrainerReport(
        feedback_events=0, preference_pairs=0, thumbs_labels=0, reward_model_accuracy=0.0,
        reward_model_shared_accuracy=0.0, reward_model_heldout_pairs=0,
        reward_model_judge_accuracy=0.0, last_reward_before=0.0, last_reward_after=0.0,
        last_kl=0.0, last_judge_before=0.0, last_judge_after=0.0, last_publish_decision="",
        labelers=(), updated_at=time.time(), training_state="waiting for data")


def main(argv: list[str] | None = None) -> int:
    cfg = config_mod.parse_entry_point(TrainerConfig, "trainer",
                                       "personalize continuous trainer", argv)
    if cfg.torch_threads:
        import torch

        torch.set_num_threads(cfg.torch_threads)
    service = TrainerService(cfg)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: service.stop_event.set())
    if cfg.metrics_port:
        start_http_server(cfg.metrics_port, cfg.metrics_host, registry=service.metrics.registry)
    log.info("trainer up: group %s, store %s, metrics :%d", cfg.group_id,
             service.store.root, cfg.metrics_port)
    return service.run()


if __name__ == "__main__":
    sys.exit(main())
