"""bench.learning_compare on synthetic runs: the served version at E events, the pairing
by preference, and the paired interval."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.learning import served
from bench.learning_compare import compare, load_users, win_at


def _point(feedback: int, version: str, win: float) -> dict[str, Any]:
    """A history point whose 95% interval is the win rate +- 0.1."""
    return {"t": 0.0, "feedback": feedback, "rankings": feedback, "version": version,
            "rm_accuracy": None, "rm_accuracy_shared": None, "win_rate": win,
            "win_lo": win - 0.1, "win_hi": win + 0.1}


def _run(wins: dict[str, list[tuple[int, str, float]]], events: int = 90
         ) -> dict[str, dict[str, Any]]:
    return {pref: {"events": events, "served": served([_point(*p) for p in points])}
            for pref, points in wins.items()}


HISTORY = [_point(0, "", 0.5), _point(5, "", 0.5), _point(20, "v1", 0.6),
           _point(25, "v1", 0.6), _point(40, "v2", 0.8), _point(60, "v1", 0.6)]


def test_served_keeps_only_the_changes() -> None:
    points = served(HISTORY)
    assert [(p["feedback"], p["version"]) for p in points] == [
        (0, ""), (20, "v1"), (40, "v2"), (60, "v1")]
    assert set(points[0]) == {"feedback", "version", "win_rate", "win_lo", "win_hi"}


@pytest.mark.parametrize(("events", "win"), [(0, 0.5), (19, 0.5), (20, 0.6), (39, 0.6),
                                             (40, 0.8), (59, 0.8), (60, 0.6), (500, 0.6)])
def test_win_at_is_the_version_served_then(events: int, win: float) -> None:
    assert win_at(served(HISTORY), events) == win


def test_no_adapter_counts_as_the_base_model() -> None:
    assert win_at(served([_point(0, "", 0.37), _point(50, "", 0.37)]), 60) == 0.5


def test_paired_difference_over_pairs_and_preferences() -> None:
    a1 = _run({"formal": [(0, "", 0.5), (30, "v1", 0.8)],
               "warm": [(0, "", 0.5), (30, "v1", 0.7)]}, events=70)
    b1 = _run({"formal": [(0, "", 0.5), (30, "v1", 0.7)],
               "warm": [(0, "", 0.5), (50, "v1", 0.55)]}, events=95)
    a2 = _run({"formal": [(0, "", 0.5), (10, "v1", 0.9)],
               "warm": [(0, "", 0.5)]}, events=80)
    b2 = _run({"formal": [(0, "", 0.5), (10, "v1", 0.75)],
               "warm": [(0, "", 0.5), (65, "v1", 0.4)]}, events=85)
    out = compare([(a1, b1), (a2, b2)])
    assert out["at_events"] == 70  # the fewest events any user sent
    diffs = {(r["pair"], r["preference"]): round(r["difference"], 6) for r in out["rows"]}
    assert diffs == {(1, "formal"): 0.1, (1, "warm"): 0.15, (2, "formal"): 0.15,
                     (2, "warm"): 0.1}  # b2 warm's v1 came at 65 events: 0.5 - 0.4
    assert out["n"] == 4 and out["mean"] == pytest.approx(0.125)
    assert 0.0 < out["low"] < 0.125 < out["high"]  # four positive differences

    later = compare([(a1, b1), (a2, b2)], events=40)
    assert {(r["pair"], r["preference"]): round(r["difference"], 6)
            for r in later["rows"]}[(2, "warm")] == 0.0  # neither warm adapter yet
    opposite = compare([(b1, a1), (b2, a2)])
    assert opposite["mean"] == pytest.approx(-0.125)
    # 75% with the interval above 50%: a1 and a2 formal (0.8, 0.9), b2 formal (0.75)
    assert (out["a_reached"], out["b_reached"]) == (2, 1)


def test_the_win_target_counts_only_within_the_event_budget() -> None:
    late = _run({"formal": [(0, "", 0.5), (101, "v1", 0.9)]}, events=120)
    in_time = _run({"formal": [(0, "", 0.5), (100, "v1", 0.9)]}, events=120)
    low = _run({"formal": [(0, "", 0.5), (20, "v1", 0.74)]}, events=120)
    out = compare([(in_time, late), (low, in_time)], events=110)
    assert [(r["a_reached"], r["b_reached"]) for r in out["rows"]] == [(True, False),
                                                                       (False, True)]


def test_runs_of_a_pair_must_play_the_same_preferences() -> None:
    a = _run({"formal": [(0, "", 0.5)]})
    b = _run({"casual": [(0, "", 0.5)]})
    with pytest.raises(ValueError, match="same preferences"):
        compare([(a, b)])


def test_events_beyond_a_users_last_are_refused() -> None:
    a = _run({"formal": [(0, "", 0.5), (10, "v1", 0.9)]}, events=70)
    b = _run({"formal": [(0, "", 0.5)]}, events=90)
    assert compare([(a, b)], events=70)["rows"][0]["difference"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="only 70 events"):
        compare([(a, b)], events=71)


def test_loads_a_summary_or_a_run_history_and_refuses_neither(tmp_path: Path) -> None:
    user = {"user": "fay", "preference": "formal", "feedback_events": 61}
    summary, results, bare = tmp_path / "s.json", tmp_path / "r.json", tmp_path / "b.json"
    summary.write_text(json.dumps({"users": [{**user, "served": served(HISTORY)}]}))
    results.write_text(json.dumps({"users": [{**user, "history": HISTORY}]}))
    bare.write_text(json.dumps({"users": [user]}))
    assert load_users(summary) == load_users(results) == {
        "formal": {"events": 61, "served": served(HISTORY)}}
    with pytest.raises(ValueError, match="no served versions"):
        load_users(bare)
    twice = tmp_path / "t.json"
    twice.write_text(json.dumps({"users": [{**user, "history": HISTORY},
                                           {**user, "user": "fay2", "history": HISTORY}]}))
    with pytest.raises(ValueError, match="two users prefer formal"):
        load_users(twice)
