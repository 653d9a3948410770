"""The learning benchmark's verdicts on its targets."""

from __future__ import annotations

from typing import Any

from bench.learning import targets

TARGET = "personal_rm_accuracy>=0.9_where_shared<=0.6"


def _user(personal: float, shared: float, leakage: float = 0.0) -> dict[str, Any]:
    return {"rm_accuracy": personal, "rm_accuracy_shared": shared, "events_to_75": None,
            "leakage_points": leakage}


def test_the_reward_model_target_needs_a_user_the_shared_model_fails() -> None:
    assert not targets([_user(0.7, 0.7)])[TARGET]  # no such user: not shown, so not met
    assert targets([_user(0.95, 0.5), _user(0.7, 0.8)])[TARGET]
    assert not targets([_user(0.8, 0.5)])[TARGET]


def test_leakage_target() -> None:
    assert targets([_user(0.9, 0.5, 4.9)])["leakage<=5_points"]
    assert not targets([_user(0.9, 0.5, 5.1)])["leakage<=5_points"]
