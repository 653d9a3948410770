"""bench.gate's replay: the served version a rule leaves after each turn, and the rules'
reading of the gate sample (the product's prompts only, the KL bound, the judge's
standard error)."""

from __future__ import annotations

import pytest

from bench.gate import Candidate, mean_delta, replay, rules, summarise
from trainer.config import PublishConfig

GATE = PublishConfig(eval_prompts=2, eval_samples=2, kl_bound=10.0)
"""The product reads the first 4 completions of a sample."""


def candidate(turn: int, win: float, judge: list[float], policy: list[float] | None = None,
              kl: float = 1.0) -> Candidate:
    policy = policy if policy is not None else judge
    return Candidate(turn, judge, policy, [0.0] * len(judge), kl, win, f"{win:.0%}")


def test_replay_counts_what_each_decision_served() -> None:
    chain = [candidate(0, 0.5, [0.0] * 4), candidate(1, 0.6, [0.0] * 4),
             candidate(2, 0.4, [0.0] * 4), candidate(3, 0.8, [0.0] * 4)]
    always = replay(chain, lambda old, new: True)
    assert always["served_wins"] == [0.6, 0.4, 0.8]
    assert (always["published"], always["lowered"], always["missed"]) == (3, 1, 0)
    assert always["mean_served_win"] == pytest.approx(0.6)
    never = replay(chain, lambda old, new: False)
    assert never["served_wins"] == [0.5, 0.5, 0.5]
    assert (never["published"], never["lowered"], never["missed"]) == (0, 0, 2)
    # a rule compares each candidate with the version served then, not the last candidate
    seen: list[tuple[int, int]] = []
    replay(chain, lambda old, new: seen.append((old.turn, new.turn)) or new.turn == 1)
    assert seen == [(0, 1), (1, 2), (1, 3)]


def test_mean_delta_pairs_by_position_over_the_first_completions() -> None:
    old = candidate(0, 0.5, [1.0, 2.0, 3.0, 4.0, 100.0])
    new = candidate(1, 0.5, [2.0, 2.0, 5.0, 4.0, -100.0])
    mean, se = mean_delta("judge", old, new, 4)
    assert mean == pytest.approx(0.75)
    assert se == pytest.approx(0.4787, abs=1e-4)  # stdev of (1, 0, 2, 0) over sqrt(4)


def test_the_product_rule_reads_only_its_prompts_and_every_rule_the_kl_bound() -> None:
    decide = rules(GATE)  # 4 prompts sampled: 8 completions, the product reads 4
    old = candidate(0, 0.5, [0.0] * 8)
    later_prompts_better = candidate(1, 0.7, [-0.1] * 4 + [5.0] * 4)
    assert not decide["judge (product)"](old, later_prompts_better)
    assert decide["judge, every gate prompt"](old, later_prompts_better)
    over_kl = candidate(1, 0.9, [5.0] * 8, kl=GATE.kl_bound + 0.1)
    assert not any(rule(old, over_kl) for rule in decide.values())
    assert decide["always"](old, candidate(1, 0.1, [-5.0] * 8))


def test_policy_head_with_the_judge_not_worse_by_a_standard_error() -> None:
    decide = rules(GATE)["policy head, judge > -1 SE"]
    old = candidate(0, 0.5, [0.0] * 4, policy=[0.0] * 4)
    # judge diffs (-0.3, 0.1, -0.3, 0.1): mean -0.1, SE 0.115: within one SE
    slightly_worse = candidate(1, 0.6, [-0.3, 0.1, -0.3, 0.1], policy=[1.0] * 4)
    assert decide(old, slightly_worse)
    clearly_worse = candidate(1, 0.6, [-1.0, -1.1, -0.9, -1.0], policy=[1.0] * 4)
    assert not decide(old, clearly_worse)
    policy_lower = candidate(1, 0.6, [1.0] * 4, policy=[-1.0] * 4)
    assert not decide(old, policy_lower)


def test_summary_pairs_each_rule_with_the_first_and_adds_up_the_publishes() -> None:
    def served(win: float, published: int) -> dict[str, float]:
        return {"mean_served_win": win, "published": published, "lowered": 1, "missed": 0}

    per_user = {"u1": {"a": served(0.5, 2), "b": served(0.7, 3)},
                "u2": {"a": served(0.9, 1), "b": served(0.8, 1)}}
    out = summarise(per_user, ["a", "b"])
    assert out["a"]["mean_served_win"] == pytest.approx(0.7)
    assert (out["a"]["published"], out["b"]["published"], out["b"]["lowered"]) == (3, 4, 2)
    assert "vs_first" not in out["a"]
    assert out["b"]["vs_first"]["mean"] == pytest.approx(0.05)  # +0.2 and -0.1
    assert out["b"]["n_users"] == 2
