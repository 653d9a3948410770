"""Scheduling of training turns (pure): fair order, and quarantine of failing users."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from trainer.config import ScheduleConfig


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


def pick_next(pending: Mapping[str, tuple[int, float]], last_trained: Mapping[str, float],
              cfg: ScheduleConfig, quarantined: Mapping[str, Quarantine] | None = None,
              now: float = 0.0) -> str | None:
    """The due user that waited longest since its last turn (never trained first).

    ``pending`` maps a user to (new feedback events, age in seconds of the oldest
    of them). A user is due with ``min_new_feedback`` new events, or with any
    once the oldest is ``max_wait_s`` old, and not while quarantined (before its
    ``until``, compared with ``now``). Ties go to the user with more new feedback,
    then to the smaller id, so the order is deterministic.
    """
    held = quarantined or {}
    due = [u for u, (n, age) in pending.items()
           if (n >= cfg.min_new_feedback or (n > 0 and age >= cfg.max_wait_s))
           and (u not in held or now >= held[u].until)]
    if not due:
        return None
    return min(due, key=lambda u: (last_trained.get(u, float("-inf")), -pending[u][0], u))
