"""bench.advantage's bookkeeping: the oracle reward reads the question out of the
chat-templated prompt, and settings are compared pair by pair over (family, seed)."""

from __future__ import annotations

import re

import pytest

from bench.advantage import Setting, oracle, question_of, summarise
from bench.common import LoraShape
from demo.preferences import PREFERENCES
from trainer.ppo.config import PPOConfig

QUESTIONS = ["How do I boil an egg?", "Why is the sky blue?"]


def test_oracle_scores_each_completion_under_its_own_question() -> None:
    formal = PREFERENCES["formal"]
    prompts = [f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n" for q in QUESTIONS]
    answers = ["Certainly. Place the egg in boiling water.", "hey so it's kinda the light lol"]
    got = oracle(formal, QUESTIONS)(prompts, answers).tolist()
    expected = [formal.score(q, a) for q, a in zip(QUESTIONS, answers, strict=True)]
    assert got == pytest.approx(expected)
    assert got[0] > got[1]
    with pytest.raises(ValueError, match="which question"):
        question_of("user: what is the time?", QUESTIONS)


def test_settings_are_compared_on_matching_family_and_seed() -> None:
    a, b = "gae:1", "rloo:4"
    prefs = [PREFERENCES["formal"], PREFERENCES["warm"]]
    rates = {("gae:1", "formal", 0): 0.6, ("gae:1", "warm", 0): 0.9,
             ("gae:1", "formal", 1): 0.7, ("gae:1", "warm", 1): 0.5,
             ("rloo:4", "formal", 0): 0.8, ("rloo:4", "warm", 0): 0.9,
             ("rloo:4", "formal", 1): 0.9, ("rloo:4", "warm", 1): 0.5}
    rows = [{"setting": s, "preference": p, "repeat": k, "rate": r, "score_gain": r,
             "kl": 10 * r, "leak_points": 5.0, "iteration_s": 1.0}
            for (s, p, k), r in reversed(rates.items())]
    out = summarise(rows, [a, b], prefs)
    assert out["gae:1"]["mean_win"] == pytest.approx(0.675)
    assert out["gae:1"]["mean_kl"] == pytest.approx(6.75)
    diff = out["rloo:4"]["win_vs_first"]
    assert diff["n"] == 4 and diff["mean"] == pytest.approx(0.1)  # (0.2 + 0 + 0.2 + 0) / 4


def test_a_setting_names_its_reward_unless_it_is_the_oracle() -> None:
    assert Setting.parse("rloo:4").name == "rloo:4"
    assert Setting.parse("gae:1", reward="recorded").name == "gae:1@recorded"
    assert Setting.parse("gae:1@recorded") == Setting("gae", 1, "recorded")


def test_a_setting_may_name_its_learning_rate() -> None:
    setting = Setting.parse("gae:1:lr=1e-3")
    assert setting == Setting("gae", 1, "oracle", 1e-3)
    assert setting.name == "gae:1:lr=0.001"
    assert Setting.parse(setting.name + "@recorded").lr == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="unknown option"):
        Setting.parse("gae:1:batch=16")


def test_a_setting_may_start_at_another_learning_rate() -> None:
    setting = Setting.parse("gae:1:lr=1e-3:start=3e-3x8")
    assert setting.start == (pytest.approx(3e-3), 8) and setting.lr == pytest.approx(1e-3)
    assert Setting.parse(setting.name) == setting
    config = setting.config(PPOConfig(), seed=3)
    assert config.seed == 3 and config.lr_at(7) == pytest.approx(3e-3)
    assert config.lr_at(8) == pytest.approx(1e-3)
    plain = Setting.parse("gae:1").config(PPOConfig(lr_start=5e-3, lr_start_steps=2), seed=0)
    assert plain.lr_at(1) == pytest.approx(5e-3), "the product's own start is kept"


def test_a_setting_may_change_the_passes_over_a_rollout() -> None:
    setting = Setting.parse("gae:1:lr=1e-3:epochs=4")
    assert setting.epochs == 4 and Setting.parse(setting.name) == setting
    assert setting.config(PPOConfig(), seed=0).ppo_epochs == 4
    assert Setting.parse("gae:1").config(PPOConfig(ppo_epochs=3), seed=0).ppo_epochs == 3


def test_a_setting_may_name_the_loras_rank_and_targets() -> None:
    setting = Setting.parse("gae:1:lora=2xall")
    assert setting.lora == LoraShape(2, "all") and Setting.parse(setting.name) == setting
    config = setting.config(PPOConfig(), seed=0)
    assert config.lora_r == 2
    assert config.lora_target_modules == ("q_proj", "k_proj", "v_proj", "o_proj",
                                          "gate_proj", "up_proj", "down_proj")
    default = PPOConfig()
    plain = Setting.parse("gae:1").config(default, seed=0)
    assert (plain.lora_r, plain.lora_target_modules) == (default.lora_r,
                                                         default.lora_target_modules)
    for bad in ("2xeverything", "0xqv", "xqv", "8"):
        with pytest.raises(ValueError, match=re.escape("expected <rank>x<qv|attn|mlp|all>")):
            Setting.parse(f"gae:1:lora={bad}")
