"""Scheduling of training turns (pure): fair order, the seed's stop rule as a user's
training state, and quarantine of failing users."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from trainer.config import ScheduleConfig

TrainingState = Literal["training", "threshold reached", "step cap reached",
                        "waiting for data"]
"""Whether the trainer trains a user again without new feedback: "training" (yes, with
spare capacity), the seed's stop rule met ("threshold reached", "step cap reached"), or
"waiting for data" (too little data, no held-out prompt for the gate yet, or continuing
without feedback is switched off). New feedback makes any user due again."""
TRAINING_STATES: tuple[TrainingState, ...] = get_args(TrainingState)


@dataclass(frozen=True)
class Quarantine:
    """A user held back after turns that raised."""

    failures: int
    """Consecutive failed turns (reset by a turn that completes)."""
    until: float
    """Monotonic time from which the user may be picked again."""


def backoff_s(failures: int, cfg: ScheduleConfig) -> float:
    """Wait after the ``failures``-th consecutive failure: ``quarantine_base_s`` doubled
    for each failure after the first, at most ``quarantine_max_s``."""
    if failures < 1:
        return 0.0
    return min(cfg.quarantine_max_s, cfg.quarantine_base_s * 2.0 ** min(failures - 1, 64))


def after_failure(previous: Quarantine | None, now: float, cfg: ScheduleConfig) -> Quarantine:
    """The quarantine of a user whose turn just raised at monotonic time ``now``."""
    failures = (previous.failures if previous else 0) + 1
    return Quarantine(failures, now + backoff_s(failures, cfg))


def training_state(ppo_stop: str, cfg: ScheduleConfig) -> TrainingState:
    """A user's state after a completed turn, from why the turn's PPO ended: "budget"
    (its share of iterations), "kl" (its KL limit), "threshold", "max_steps", or "" (the
    turn stopped before the gate, waiting for data)."""
    if ppo_stop == "threshold":
        return "threshold reached"
    if ppo_stop == "max_steps":
        return "step cap reached"
    if ppo_stop in ("budget", "kl") and cfg.continue_without_feedback:
        return "training"
    return "waiting for data"


def free(user: str, quarantined: Mapping[str, Quarantine], now: float) -> bool:
    """Whether ``user`` may train at ``now``: not quarantined, or its ``until`` passed."""
    return user not in quarantined or now >= quarantined[user].until


def due_users(pending: Mapping[str, tuple[int, float]], cfg: ScheduleConfig,
              quarantined: Mapping[str, Quarantine] | None = None,
              now: float = 0.0) -> list[str]:
    """The users due for a turn (``pick_next``'s rule 1): ``min_new_feedback`` new events,
    or any once the oldest is ``max_wait_s`` old; quarantined users until their ``until``."""
    held = quarantined or {}
    return [u for u, (n, age) in pending.items()
            if (n >= cfg.min_new_feedback or (n > 0 and age >= cfg.max_wait_s))
            and free(u, held, now)]


def pick_next(pending: Mapping[str, tuple[int, float]], last_trained: Mapping[str, float],
              cfg: ScheduleConfig, quarantined: Mapping[str, Quarantine] | None = None,
              now: float = 0.0, states: Mapping[str, TrainingState] | None = None
              ) -> str | None:
    """The next user to train, or None when nobody is.

    ``pending`` maps a user to (new feedback events, age in seconds of the oldest of
    them); ``last_trained`` a user to the monotonic end of its last turn; ``states``
    the users this process may continue (trained before, partition owned) to their
    :data:`TrainingState`. Quarantined users are skipped until their ``until``; times
    are compared with ``now``.

    1. Due users first: ``min_new_feedback`` new events, or any once the oldest is
       ``max_wait_s`` old. The least recently trained goes first (never trained
       first); ties go to more new feedback, then to the smaller id.
    2. Otherwise, with ``continue_without_feedback``, a user whose state is
       "training" and whose last turn ended ``continue_min_interval_s`` ago or more:
       users with some (not yet due) new feedback first, then the least recently
       trained, then the smaller id.
    """
    held = quarantined or {}

    def last(u: str) -> float:
        return last_trained.get(u, float("-inf"))

    due = due_users(pending, cfg, held, now)
    if due:
        return min(due, key=lambda u: (last(u), -pending[u][0], u))
    if not cfg.continue_without_feedback or not states:
        return None
    going = [u for u, state in states.items()
             if state == "training" and free(u, held, now)
             and now - last(u) >= cfg.continue_min_interval_s]
    if not going:
        return None
    return min(going, key=lambda u: (pending.get(u, (0, 0.0))[0] == 0, last(u), u))
