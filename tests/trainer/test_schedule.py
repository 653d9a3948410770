from __future__ import annotations

from trainer.config import ScheduleConfig
from trainer.loop.schedule import pick_next

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
