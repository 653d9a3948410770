from __future__ import annotations

import dataclasses
import random

import pytest

from trainer.config import ScheduleConfig
from trainer.loop.schedule import (
    TRAINING_STATES,
    Quarantine,
    TrainingState,
    after_failure,
    backoff_s,
    pick_next,
    training_state,
)

CFG = ScheduleConfig(min_new_feedback=3, max_wait_s=60)


def test_due_by_count_or_age() -> None:
    assert pick_next({"a": (2, 10.0)}, {}, CFG) is None
    assert pick_next({"a": (3, 0.0)}, {}, CFG) == "a"
    assert pick_next({"a": (1, 61.0)}, {}, CFG) == "a"
    assert pick_next({"a": (0, 1000.0)}, {}, CFG) is None


def test_fair_order() -> None:
    pending = {"a": (5, 0.0), "b": (3, 0.0), "c": (9, 0.0)}
    assert pick_next(pending, {"a": 100.0, "b": 50.0, "c": 200.0}, CFG) == "b"
    assert pick_next(pending, {"a": 100.0, "c": 200.0}, CFG) == "b", "never trained goes first"
    assert pick_next(pending, {}, CFG) == "c", "then the one with most new feedback"
    # a busy user cannot starve others: after its turn it goes to the back
    order, last = [], {}
    for t in range(6):
        user = pick_next(pending, last, CFG)
        order.append(user)
        last[user] = float(t)
    assert order == ["c", "a", "b", "c", "a", "b"]


# --- quarantine of users whose turn raised ---------------------------------------------

QCFG = ScheduleConfig(min_new_feedback=1, quarantine_base_s=5.0, quarantine_max_s=60.0)


def reference_backoff(failures: int, base: float, most: float) -> float:
    """The backoff as a plain loop: start at ``base``, double per further failure."""
    wait = base
    for _ in range(failures - 1):
        wait = min(wait * 2, most)
    return min(wait, most)


def test_backoff_doubles_up_to_the_max() -> None:
    for failures in range(1, 40):
        assert backoff_s(failures, QCFG) == reference_backoff(failures, 5.0, 60.0)
    assert [backoff_s(n, QCFG) for n in range(1, 6)] == [5.0, 10.0, 20.0, 40.0, 60.0]
    assert backoff_s(10_000, QCFG) == 60.0, "no overflow after many failures"


def test_after_failure_counts_consecutive_failures() -> None:
    q = after_failure(None, 100.0, QCFG)
    assert q == Quarantine(failures=1, until=105.0)
    q = after_failure(q, 106.0, QCFG)
    assert q == Quarantine(failures=2, until=116.0)


def test_quarantined_user_is_skipped_until_its_time_and_others_go_on() -> None:
    pending = {"bad": (9, 0.0), "a": (1, 0.0), "b": (1, 0.0)}
    held = {"bad": Quarantine(1, until=105.0)}
    assert pick_next(pending, {}, QCFG) == "bad", "most feedback first when nobody is held"
    # while "bad" is held the others are picked, fairly, as if it were not there
    order, last = [], {}
    for t in range(4):
        user = pick_next(pending, last, QCFG, held, now=100.0 + t)
        order.append(user)
        last[user] = float(t)
    assert order == ["a", "b", "a", "b"]
    assert pick_next(pending, last, QCFG, held, now=105.0) == "bad", "due again at until"
    assert pick_next({"bad": (9, 0.0)}, {}, QCFG, held, now=104.9) is None


# --- training on without new feedback, until the seed's stop rule ----------------------

CCFG = ScheduleConfig(min_new_feedback=3, max_wait_s=60, continue_min_interval_s=10.0)


def test_training_state_follows_the_stop_rule() -> None:
    assert training_state("budget", CCFG) == "training"
    assert training_state("kl", CCFG) == "training", "a turn stopped at its KL limit"
    assert training_state("threshold", CCFG) == "threshold reached"
    assert training_state("max_steps", CCFG) == "step cap reached"
    assert training_state("", CCFG) == "waiting for data"
    off = dataclasses.replace(CCFG, continue_without_feedback=False)
    assert training_state("budget", off) == "waiting for data", "trains on new feedback only"
    assert training_state("max_steps", off) == "step cap reached"


def test_users_below_the_stop_rule_train_on_without_feedback() -> None:
    states: dict[str, TrainingState] = {
        "a": "training", "b": "training", "done": "threshold reached",
        "capped": "step cap reached", "thin": "waiting for data"}
    last = {"a": 50.0, "b": 20.0, "done": 0.0, "capped": 0.0, "thin": 0.0}
    assert pick_next({}, last, CCFG, now=100.0, states=states) == "b", "least recently trained"
    assert pick_next({}, {**last, "b": 95.0}, CCFG, now=100.0, states=states) == "a"
    assert pick_next({}, {**last, "a": 95.0, "b": 95.0}, CCFG, now=100.0,
                     states=states) is None, "each waits continue_min_interval_s"
    assert pick_next({}, last, CCFG, now=100.0, states={"done": "threshold reached",
                                                        "capped": "step cap reached"}) is None
    # a due user goes first, however recently trained; then some new feedback first
    assert pick_next({"thin": (3, 0.0)}, {**last, "thin": 99.0}, CCFG, now=100.0,
                     states=states) == "thin"
    assert pick_next({"a": (1, 0.0)}, last, CCFG, now=100.0, states=states) == "a"
    # switched off: only new feedback trains
    off = dataclasses.replace(CCFG, continue_without_feedback=False)
    assert pick_next({"a": (1, 0.0)}, last, off, now=100.0, states=states) is None
    # quarantine holds continuing users back too
    held = {"b": Quarantine(1, until=200.0)}
    assert pick_next({}, last, CCFG, held, now=100.0, states=states) == "a"


def test_continuing_users_take_turns_fairly() -> None:
    states: dict[str, TrainingState] = {"a": "training", "b": "training", "c": "training"}
    cfg = dataclasses.replace(CCFG, continue_min_interval_s=0.0)
    order, last = [], {}
    for t in range(6):
        user = pick_next({}, last, cfg, now=float(t), states=states)
        order.append(user)
        last[user] = float(t)
    assert order == ["a", "b", "c", "a", "b", "c"]


def reference_pick(pending: dict[str, tuple[int, float]], last: dict[str, float],
                   cfg: ScheduleConfig, held: dict[str, Quarantine], now: float,
                   states: dict[str, TrainingState]) -> str | None:
    """pick_next as a plain scan: rank every candidate by a tuple and keep the smallest."""
    best, best_rank = None, None
    for user in sorted(set(pending) | set(states)):
        if user in held and now < held[user].until:
            continue
        n, age = pending.get(user, (0, 0.0))
        last_t = last.get(user, -1e300)
        if n >= cfg.min_new_feedback or (n > 0 and age >= cfg.max_wait_s):
            rank = (0, 0, last_t, -n)
        elif (cfg.continue_without_feedback and states.get(user) == "training"
              and now - last_t >= cfg.continue_min_interval_s):
            rank = (1, 0 if n > 0 else 1, last_t, 0)
        else:
            continue
        if best_rank is None or rank < best_rank:
            best, best_rank = user, rank
    return best


@pytest.mark.parametrize("seed", range(5))
def test_pick_next_matches_a_plain_reference(seed: int) -> None:
    rng = random.Random(seed)
    users = [f"u{i}" for i in range(6)]
    for _ in range(400):
        cfg = ScheduleConfig(min_new_feedback=rng.randint(1, 4), max_wait_s=30.0,
                             continue_without_feedback=rng.random() < 0.8,
                             continue_min_interval_s=rng.choice([0.0, 5.0, 20.0]))
        now = 100.0
        pending = {u: (rng.randint(0, 5), rng.choice([0.0, 10.0, 40.0]))
                   for u in users if rng.random() < 0.4}
        pending = {u: v for u, v in pending.items() if v[0] > 0}  # as the journal reports
        last = {u: rng.choice([60.0, 85.0, 90.0, 99.0]) for u in users if rng.random() < 0.7}
        held = {u: Quarantine(1, rng.choice([50.0, 150.0])) for u in users
                if rng.random() < 0.2}
        states = {u: rng.choice(TRAINING_STATES) for u in users if rng.random() < 0.7}
        assert pick_next(pending, last, cfg, held, now, states) == reference_pick(
            pending, last, cfg, held, now, states), (pending, last, cfg, held, states)
