"""Online win rates and automatic rollback, at the edge: the store, the publisher and the
metrics around the pure rules of online.py.

Each turn the trainer reviews the user's served (latest) version: its comparisons with
the base model and with its parent, derived from the journal, go into the version's
manifest metrics, the user's report and the aggregate metrics. A version that loses to
its parent with confidence is rolled back: the parent's weights are published again
as a new version (fenced on the latest), announced on ``adapter-updates`` so every
replica serves them, and training goes on from it (the learner reloads a user whose
latest version it did not publish).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from services.contract.status import OnlineWinRate, TrainerReport
from services.contract.store import AdapterStore, StaleParent
from trainer.ingest.journal import Joined
from trainer.loop.online import Comparison, OnlineConfig, comparisons, should_roll_back, tally
from trainer.loop.publish import Publisher
from trainer.metrics import TrainerMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OnlineReview:
    """The user's online figures after a review."""

    vs_base: OnlineWinRate = field(default_factory=OnlineWinRate)
    vs_parent: OnlineWinRate = field(default_factory=OnlineWinRate)
    rollback: str = ""
    """What the latest rollback of the user did and why ("" : none in this process)."""
    rolled_back_to: str = ""
    """The version published by a rollback in this review ("" : none)."""

    def annotate(self, report: TrainerReport) -> TrainerReport:
        return dataclasses.replace(report, online_vs_base=self.vs_base,
                                   online_vs_parent=self.vs_parent,
                                   last_rollback=self.rollback or report.last_rollback)


class OnlineReviewer:
    def __init__(self, cfg: OnlineConfig, store: AdapterStore, publisher: Publisher,
                 metrics: TrainerMetrics) -> None:
        self._cfg = cfg
        self._store = store
        self._publisher = publisher
        self._metrics = metrics
        self._counted: dict[str, Counter[tuple[str, str]]] = {}
        self._observed: dict[str, tuple[str, int]] = {}
        self._rollbacks: dict[str, str] = {}

    def review(self, user_id: str, joined: Sequence[Joined]) -> OnlineReview:
        """Tally the user's served version; roll it back when it loses to its parent."""
        comps = comparisons(joined)
        self._count(user_id, comps)
        if user_id not in self._rollbacks:  # e.g. after a restart: the report's
            previous = self._store.read_status(user_id)
            self._rollbacks[user_id] = previous.last_rollback if previous else ""
        latest = self._store.latest(user_id)
        if not latest:
            return OnlineReview(rollback=self._rollbacks[user_id])
        vs_base = tally(comps, latest, "base", self._cfg.z)
        vs_parent = tally(comps, latest, "parent", self._cfg.z)
        self._record(user_id, latest, vs_base, vs_parent)
        review = OnlineReview(vs_base, vs_parent, self._rollbacks[user_id])
        reason = should_roll_back(self._cfg, vs_parent)
        if not reason:
            return review
        manifest = self._store.manifest(user_id, latest)
        if (manifest.parent_arm != vs_parent.arm_version
                or self._store.read_control(user_id).held):  # an operator holds the user
            return review
        try:
            version = self._publisher.restore(
                user_id, manifest.parent_arm, replaces=latest,
                metrics={"rolled_back_from": latest, "restores": manifest.parent_arm,
                         "rollback_reason": reason})
        except StaleParent as exc:
            log.warning("user %s: rollback fenced: %s", user_id, exc)
            self._metrics.publish_fenced.inc()
            return review
        self._metrics.rollbacks.inc()
        self._rollbacks[user_id] = note = (
            f"rolled back {latest} -> {version} (the weights of {manifest.parent_arm}): "
            f"{reason}")
        log.warning("user %s: %s", user_id, note)
        return OnlineReview(OnlineWinRate(version=version), OnlineWinRate(version=version),
                            note, version)

    def forget(self, user_id: str) -> None:
        """Drop what this reviewer keeps of an erased user."""
        for kept in (self._counted, self._observed, self._rollbacks):
            kept.pop(user_id, None)

    def _count(self, user_id: str, comps: Sequence[Comparison]) -> None:
        """Aggregate counters by arm and outcome: what is new since the last review."""
        now = Counter((c.arm, c.outcome) for c in comps)
        before = self._counted.get(user_id, Counter())
        for (arm, outcome), n in now.items():
            if n > before[(arm, outcome)]:
                self._metrics.online_comparisons.labels(arm, outcome).inc(
                    n - before[(arm, outcome)])
        self._counted[user_id] = now

    def _record(self, user_id: str, version: str, vs_base: OnlineWinRate,
                vs_parent: OnlineWinRate) -> None:
        """Into the version's manifest and the win-rate histogram, when they changed."""
        n_base = vs_base.wins + vs_base.losses + vs_base.ties
        n = n_base + vs_parent.wins + vs_parent.losses + vs_parent.ties
        if self._observed.get(user_id) == (version, n):
            return
        if n_base:
            self._metrics.online_win_rate_vs_base.observe(vs_base.win_rate)
        self._observed[user_id] = (version, n)
        if n:
            self._store.update_metrics(user_id, version, {
                "online_vs_base": dataclasses.asdict(vs_base),
                "online_vs_parent": dataclasses.asdict(vs_parent)})
