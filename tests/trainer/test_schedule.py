from __future__ import annotations

from trainer.config import ScheduleConfig
from trainer.loop.schedule import Quarantine, after_failure, backoff_s, pick_next

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
