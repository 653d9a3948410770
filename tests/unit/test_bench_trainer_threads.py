"""bench.trainer_threads's bookkeeping: each thread count is compared with the first one
round by round, within one server condition."""

from __future__ import annotations

import math

import pytest

from bench.trainer_threads import summarise


def row(condition: str, r: int, threads: int, ppo: float, served: float) -> dict[str, float | str]:
    return {"condition": condition, "round": r, "threads": threads, "ppo_iteration_s": ppo,
            "head_fit_s": ppo / 10, "completions_per_s": served}


def test_ratios_pair_rounds_within_a_condition() -> None:
    rows = []
    for r in range(6):  # 2 threads take (r + 2) times as long as 1 thread in round r
        rows += [row("serving", r, 1, 1.0 + r, 4.0), row("serving", r, 2, (1.0 + r) * (r + 2), 2.0),
                 row("idle", r, 1, 2.0, 0.0), row("idle", r, 2, 1.0, 0.0)]
    got = {(e["condition"], e["threads"]): e for e in summarise(rows, [1, 2])}
    serving = got[("serving", 2)]
    assert serving["ppo_iteration_s_ratio"] == pytest.approx(4.5)  # median of 2..7
    assert serving["ppo_iteration_s_ratio_ci"] == (2.0, 7.0)  # 6 rounds: the extremes
    assert serving["completions_per_s_ratio"] == pytest.approx(0.5)
    assert got[("serving", 1)]["ppo_iteration_s_ratio"] == pytest.approx(1.0)
    idle = got[("idle", 2)]
    assert idle["ppo_iteration_s_ratio"] == pytest.approx(0.5)
    assert math.isnan(idle["completions_per_s_ratio"])  # nothing served: no ratio
    assert idle["completions_per_s_ratio_ci"] is None
