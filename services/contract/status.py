"""The trainer's per-user report, written to the adapter store by the trainer and
served by GetUserStatus on any server replica.

A typed record, parsed strictly: a file that lacks a field or carries an unknown
one is refused as a whole (and logged), never read as zeros.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

from services.contract.records import json_object

STATUS_SCHEMA_VERSION = 2


class StatusError(ValueError):
    """A status file that does not parse as this version's record."""


@dataclass(frozen=True)
class LabelerReport:
    """How well one labeler agrees with the others (leave-one-out majority)."""

    labeler_id: str
    agreement: float
    """Agreement with the consensus in [0, 1]."""
    judgements: int
    """Pair judgements another labeler's majority could check."""
    flagged: bool
    """Down-weighted for disagreeing with the consensus."""


@dataclass(frozen=True)
class OnlineWinRate:
    """The served version against one comparison arm, judged by the user's own rankings
    and thumbs of interleaved candidates (a tie counts half a win)."""

    version: str = ""
    """The served version compared."""
    arm_version: str = ""
    """The parent arm's version; empty for the base model."""
    wins: int = 0
    losses: int = 0
    ties: int = 0
    win_rate: float = 0.0
    """(wins + ties / 2) / comparisons; 0 before any comparison."""
    lower: float = 0.0
    """Lower bound of the 95% Wilson interval of the win rate (0 before any)."""
    upper: float = 1.0
    """Upper bound of the same interval (1 before any)."""


@dataclass(frozen=True)
class TrainerReport:
    """What the trainer knows about one user after its latest turn."""

    feedback_events: int
    """Feedback events in the user's training data."""
    preference_pairs: int
    thumbs_labels: int
    reward_model_accuracy: float
    """Held-out pairwise accuracy of the user's reward model (0 when not measured)."""
    reward_model_shared_accuracy: float
    """The same for the shared reward model alone, on the same pairs."""
    reward_model_heldout_pairs: int
    """Held-out pairs the accuracies were measured on; 0 when not measured."""
    reward_model_judge_accuracy: float
    """The same for the user's judge (the publish gate's scorer, which PPO never
    optimised)."""
    last_reward_before: float
    last_reward_after: float
    last_kl: float
    last_judge_before: float
    """The served adapter's mean reward by the judge on the gate's held-out prompts."""
    last_judge_after: float
    """The candidate's mean reward by the judge on the same prompts."""
    last_publish_decision: str
    labelers: tuple[LabelerReport, ...]
    updated_at: float
    """Unix seconds of the report."""
    ppo_steps_total: int = 0
    """PPO iterations the user's policy has had in total (the seed's step count)."""
    ppo_max_steps: int = 0
    """The step cap: no PPO iteration for the user after this many."""
    reward_threshold: float | None = None
    """Mean reward at which the user's PPO stops (None: no threshold)."""
    training_state: str = ""
    """Whether the trainer trains the user again without new feedback: "training" (yes,
    while it has spare capacity), "threshold reached", "step cap reached" or "waiting for
    data" (the trainer's ``TrainingState``, set by its loop, which owns the schedule)."""

    online_vs_base: OnlineWinRate = field(default_factory=OnlineWinRate)
    """The served version against the base model (interleaved comparisons)."""
    online_vs_parent: OnlineWinRate = field(default_factory=OnlineWinRate)
    """The served version against its parent version."""
    last_rollback: str = ""
    """The latest automatic rollback of the user and why; empty when none."""

    def to_json(self) -> str:
        body = {"schema_version": STATUS_SCHEMA_VERSION, **dataclasses.asdict(self)}
        return json.dumps(body, allow_nan=False)

    @classmethod
    def from_json(cls, raw: str | bytes) -> TrainerReport:
        body = json_object(raw, StatusError)
        if body.pop("schema_version", None) != STATUS_SCHEMA_VERSION:
            raise StatusError("unsupported schema_version")
        names = {f.name for f in dataclasses.fields(cls)}
        if set(body) != names:
            missing, unknown = sorted(names - set(body)), sorted(set(body) - names)
            raise StatusError(f"fields missing {missing}, unknown {unknown}")
        try:
            labelers = tuple(LabelerReport(**item) for item in body.pop("labelers"))
        except TypeError as exc:
            raise StatusError(f"bad labeler entry: {exc}") from exc
        try:
            for name in ("online_vs_base", "online_vs_parent"):
                body[name] = OnlineWinRate(**body[name])
        except TypeError as exc:
            raise StatusError(f"bad online win rate: {exc}") from exc
        return cls(labelers=labelers, **body)


def finite(x: float | None) -> float:
    """A figure for the report: None and NaN/inf (not measured) read as 0."""
    return 0.0 if x is None or not math.isfinite(x) else float(x)
