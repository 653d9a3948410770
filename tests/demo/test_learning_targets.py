"""The learning benchmark's verdicts on its targets, on synthetic results: each can
fail."""

from __future__ import annotations

from typing import Any

from bench.learning import annotate, family_wins, table, targets

RM = "personal_rm>=0.85_after_40_rankings"
SHARED = "shared_rm<=0.6_on_conflicting_pairs"
WIN = "win>=75%_interval_above_50%_within_100_events_on_6_of_8_families"
LEAK = "leakage<=5_points_on_independent_preferences"
SAME = "byte_identical_answers"
IDENTICAL = {"checks": 12, "mismatches": 0, "skipped": 1}


def _point(feedback: int, rankings: int, rm: float | None, shared: float | None,
           win: float, lo: float) -> dict[str, Any]:
    return {"t": 0.0, "feedback": feedback, "rankings": rankings, "version": "v1",
            "rm_accuracy": rm, "rm_accuracy_shared": shared, "win_rate": win, "win_lo": lo,
            "win_hi": min(1.0, win + 0.1)}


def _user(pref: str, family: str, *, rm: float = 0.9, shared: float = 0.5,
          win_at: int | None = 60, win_lo: float = 0.6,
          leak: tuple[float, float, float] = (1.0, -10.0, 12.0)) -> dict[str, Any]:
    history = [_point(10, 8, None, None, 0.5, 0.36), _point(50, 41, rm, shared, 0.6, 0.45)]
    if win_at is not None:
        history.append(_point(win_at, 45, rm, shared, 0.8, win_lo))
    points, lo, hi = leak
    leak_row = {"preference": "bullets", "points": points, "lo": lo, "hi": hi, "n": 48,
                "confidence": 0.99, "leaks": False}
    return {"user": pref[:6], "preference": pref, "family": family, "history": history,
            "feedback_events": 80, "rankings": 56, "rm_accuracy": rm,
            "rm_accuracy_shared": shared, "win_rate": 0.8, "win_lo": win_lo, "win_hi": 0.9,
            "comparisons": 48, "best_win_rate": 0.8, "leakage": [leak_row],
            "leakage_worst": leak_row, "identity": IDENTICAL}


def _eight(**overrides: Any) -> list[dict[str, Any]]:
    users = [_user(p, f) for p, f in (
        ("formal", "formality"), ("casual", "formality"), ("examples", "examples"),
        ("warm", "warmth"), ("technical", "vocabulary"), ("summary", "summary"),
        ("questions", "questions"), ("hedged", "certainty"), ("second_person", "address"))]
    for i, kwargs in overrides.items():
        users[int(i[1:])] = _user(users[int(i[1:])]["preference"],
                                  users[int(i[1:])]["family"], **kwargs)
    annotate(users)
    return users


def test_all_targets_met_on_a_good_run() -> None:
    users = _eight()
    assert all(targets(users, IDENTICAL).values()), targets(users, IDENTICAL)
    assert "formal" in table(users)


def test_reward_model_targets_fail() -> None:
    assert not targets(_eight(u3={"rm": 0.84}), IDENTICAL)[RM]
    assert not targets(_eight(u0={"shared": 0.7}), IDENTICAL)[SHARED]
    # shared accuracy of a user without a conflicting partner does not matter
    assert targets(_eight(u3={"shared": 0.9}), IDENTICAL)[SHARED]
    # a user never measured after 40 rankings: unmet
    users = _eight()
    users[2]["history"] = users[2]["history"][:1]
    annotate(users)
    assert not targets(users, IDENTICAL)[RM]


def test_win_target_needs_six_families_with_intervals_above_half_in_time() -> None:
    # three failing families out of eight: 5 pass, unmet
    users = _eight(u2={"win_at": None}, u3={"win_at": 150}, u4={"win_lo": 0.5})
    assert sum(family_wins(users).values()) == 5
    assert not targets(users, IDENTICAL)[WIN]
    # two failing: 6 of 8 pass, met; one of two formality users failing fails the family
    assert targets(_eight(u2={"win_at": None}, u3={"win_at": 150}), IDENTICAL)[WIN]
    assert not family_wins(_eight(u1={"win_at": None}))["formality"]
    # fewer than six families run: unmet however well they did
    assert not targets(_eight()[:5], IDENTICAL)[WIN]


def test_leakage_target_fails_on_a_real_shift_either_way() -> None:
    assert not targets(_eight(u1={"leak": (20.0, 8.0, 32.0)}), IDENTICAL)[LEAK]
    assert not targets(_eight(u1={"leak": (-20.0, -32.0, -8.0)}), IDENTICAL)[LEAK]
    assert targets(_eight(u1={"leak": (12.0, -2.0, 26.0)}), IDENTICAL)[LEAK]  # noise
    users = _eight()
    for u in users:
        u["leakage"] = []
    assert not targets(users, IDENTICAL)[LEAK]  # nothing measured: not shown


def test_byte_identity_target_fails_on_a_mismatch_or_no_checks() -> None:
    assert not targets(_eight(), {"checks": 12, "mismatches": 1, "skipped": 0})[SAME]
    assert not targets(_eight(), {"checks": 0, "mismatches": 0, "skipped": 3})[SAME]
