"""Fair scheduling of training turns (pure)."""

from __future__ import annotations

from collections.abc import Mapping

from trainer.config import ScheduleConfig


def pick_next(pending: Mapping[str, tuple[int, float]], last_trained: Mapping[str, float],
              cfg: ScheduleConfig) -> str | None:
    """The due user that waited longest since its last turn (never trained first).

    ``pending`` maps a user to (new feedback events, age in seconds of the oldest
    of them). A user is due with ``min_new_feedback`` new events, or with any
    once the oldest is ``max_wait_s`` old. Ties go to the user with more new
    feedback, then to the smaller id, so the order is deterministic.
    """
    due = [u for u, (n, age) in pending.items()
           if n >= cfg.min_new_feedback or (n > 0 and age >= cfg.max_wait_s)]
    if not due:
        return None
    return min(due, key=lambda u: (last_trained.get(u, float("-inf")), -pending[u][0], u))
