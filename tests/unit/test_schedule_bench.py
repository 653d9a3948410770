"""bench.schedule's pure parts: a schedule's text, and the paired summary of the users'
final wins."""

from __future__ import annotations

import argparse

import pytest

from bench.schedule import Schedule, parse_schedule, summarise


def test_a_schedule_names_the_events_at_each_turn() -> None:
    assert parse_schedule("early=16,32,48") == Schedule("early", (16, 32, 48))
    assert parse_schedule("same=48,48,64") == Schedule("same", (48, 48, 64))


@pytest.mark.parametrize("text", ["16,32", "=16", "a=", "a=16,x", "a=0,16", "a=32,16"])
def test_a_malformed_schedule_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="name=n1,n2"):
        parse_schedule(text)


def test_summary_pairs_each_schedule_with_the_first_per_user() -> None:
    finals = {"u1": {"a": 0.5, "b": 0.7}, "u2": {"a": 0.9, "b": 1.0},
              "u3": {"a": 0.6, "b": 0.7}}
    out = summarise(finals, ["a", "b"])
    assert out["a"]["mean_win"] == pytest.approx(2.0 / 3)
    assert out["b"]["mean_win"] == pytest.approx(0.8)
    assert out["a"]["n_users"] == out["b"]["n_users"] == 3
    assert "vs_first" not in out["a"]
    # paired over users: +0.2, +0.1, +0.1
    assert out["b"]["vs_first"]["mean"] == pytest.approx(0.4 / 3)
    assert out["b"]["vs_first"]["n"] == 3
    assert out["b"]["vs_first"]["mean_low"] < out["b"]["vs_first"]["mean"] \
        < out["b"]["vs_first"]["mean_high"]
