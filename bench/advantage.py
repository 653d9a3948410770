"""How far PPO moves a user's policy in a fixed number of iterations: advantage estimators,
against an exact reward or the reward model a recorded run's rankings fit.

    python -m bench.advantage                       # SmolLM2-135M, about 30 min on 2 cores
    python -m bench.advantage --model .cache/test-models/tiny-llama --iterations 2 \
        --preferences formal,warm --eval-seeds 1    # quick
    python -m bench.advantage --combine a.json b.json   # pool two runs' seeds

Each setting of ``--settings``
(``estimator:samples_per_prompt[:lr=<x>][:start=<x>x<n>][:epochs=<n>][:lora=<r>x<set>]``;
start: the first n iterations at learning rate x; epochs: passes over each rollout; lora:
the LoRA's rank and the layers it adapts, ``qv``, ``attn``, ``mlp`` or ``all``, each
row counting its trainable parameters) trains a fresh per-user LoRA with the product's
PPO (``trainer.ppo``, its defaults otherwise) for
``--iterations`` iterations against one hidden preference of ``demo.preferences`` used
as the reward (its noise-free score: a perfect reward model, so that only the policy
update differs), or, with ``--reward recorded:<run>``, against the personal reward model
fitted on the rankings that a ``bench.learning`` run's user of that preference sent (the
same policy update, the product's reward model: what the gap between the two costs).
Every setting samples the same number of completions per iteration (``batch_size``) of
the same length and trains the same LoRA; with more samples per prompt a rollout covers
fewer distinct prompts.

After training, the adapter and the base model (adapter off) answer each held-out
prompt of ``demo.prompts`` (never trained on) with ``--eval-seeds`` seeds, the same
seed for both; the preference judges each pair (win, tie or loss), as in
``bench.learning``. Per family: the win rate vs base with its 95% Wilson interval and
the number of comparisons, the mean score gain over base, the last rollout's KL from the
base model, and the largest shift under a preference independent of the trained one
(leakage, as ``bench.learning`` measures it). ``--iterations 12,24,36`` judges one
adapter after each of those iteration counts (a setting per checkpoint). The settings run
interleaved (the order alternates from one family to the next), once per PPO seed of
``--seeds``; the paired difference of each setting from the first, over the (family,
seed) units, has a t interval. ``--combine`` pools the rows of several result files
(runs of other seeds) into one report.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from bench.common import (
    DEFAULT_MODEL,
    LORA_TARGETS,
    LoraShape,
    paired_difference,
    settle,
    table,
    write_result,
)
from bench.reward_replay import recorded
from demo.evaluation import Answers, compare, leakage, worst
from demo.preferences import PREFERENCES, Preference
from demo.prompts import eval_prompts, feedback_prompts
from demo.stats import fmt_rate
from trainer.data.chat import ChatMessages, prompt_text
from trainer.ppo.config import PPOConfig, RewardFn
from trainer.ppo.policies import PolicyPool
from trainer.ppo.rollout import sample_rollout
from trainer.ppo.trainer import PPOTrainer
from trainer.reward.config import RewardModelConfig
from trainer.reward.model import PersonalRewardModel

EVAL_SEED = 7_000


@dataclass(frozen=True)
class Setting:
    advantage: str
    samples_per_prompt: int
    reward: str = "oracle"
    """What PPO optimised: "oracle", or "recorded" (a reward model fitted on a run's
    rankings)."""
    lr: float | None = None
    """The LoRA's learning rate; None: the product's default."""
    start: tuple[float, int] | None = None
    """The learning rate of the first iterations and their number (PPOConfig's
    ``lr_start``, ``lr_start_steps``); None: the product's default."""
    epochs: int | None = None
    """Passes over each rollout batch (PPOConfig's ``ppo_epochs``); None: the product's
    default."""
    lora: LoraShape | None = None
    """The LoRA's rank and target set; None: the product's."""

    @property
    def name(self) -> str:
        """``estimator:samples_per_prompt[:lr=<x>][:start=<x>x<n>][:epochs=<n>]
        [:lora=<rank>x<targets>]``, with ``@recorded`` for the fitted reward."""
        lr = "" if self.lr is None else f":lr={self.lr:g}"
        start = "" if self.start is None else f":start={self.start[0]:g}x{self.start[1]}"
        epochs = "" if self.epochs is None else f":epochs={self.epochs}"
        lora = "" if self.lora is None else f":lora={self.lora.name}"
        suffix = "" if self.reward == "oracle" else f"@{self.reward}"
        return f"{self.advantage}:{self.samples_per_prompt}{lr}{start}{epochs}{lora}{suffix}"

    @classmethod
    def parse(cls, name: str, reward: str = "oracle") -> Setting:
        body, _, named_reward = name.partition("@")
        estimator, samples, *options = body.split(":")
        lr, start, epochs, lora = None, None, None, None
        for option in options:
            key, _, value = option.partition("=")
            if key == "lr":
                lr = float(value)
            elif key == "start":
                rate, _, steps = value.partition("x")
                start = (float(rate), int(steps))
            elif key == "epochs":
                epochs = int(value)
            elif key == "lora":
                lora = LoraShape.parse(value)
            else:
                raise ValueError(f"setting {name!r}: unknown option {option!r} (lr=<x>, "
                                 f"start=<x>x<iterations>, epochs=<n>, lora=<rank>x<"
                                 f"{'|'.join(LORA_TARGETS)}>)")
        return cls(estimator, int(samples), named_reward or reward, lr, start, epochs, lora)

    def config(self, base: PPOConfig, seed: int) -> PPOConfig:
        """``base`` with this setting's estimator, learning rates, epochs, LoRA and
        ``seed``."""
        lr_start, lr_start_steps = self.start or (base.lr_start, base.lr_start_steps)
        rank, targets = ((base.lora_r, base.lora_target_modules) if self.lora is None
                         else (self.lora.rank, self.lora.modules))
        return replace(base, advantage=self.advantage, samples_per_prompt=self.samples_per_prompt,
                       seed=seed, lr=base.lr if self.lr is None else self.lr,
                       lr_start=lr_start, lr_start_steps=lr_start_steps,
                       ppo_epochs=base.ppo_epochs if self.epochs is None else self.epochs,
                       lora_r=rank, lora_target_modules=targets)


def checkpoint_name(setting: Setting, iterations: int, checkpoints: Sequence[int]) -> str:
    """A row's setting: the setting's name, with `` x<iterations>`` when one adapter is
    judged at several checkpoints."""
    return setting.name if len(checkpoints) == 1 else f"{setting.name} x{iterations}"


def chat(question: str) -> ChatMessages:
    return [{"role": "user", "content": question}]


def question_of(prompt: str, questions: Sequence[str]) -> str:
    """The question a chat-templated prompt text asks."""
    found = [q for q in questions if q in prompt]
    if len(found) != 1:
        raise ValueError(f"cannot tell which question {prompt!r} asks")
    return found[0]


def oracle(preference: Preference, questions: Sequence[str]) -> RewardFn:
    """The reward: the preference's noise-free score of each completion."""
    def reward(prompts: list[str], completions: list[str]) -> torch.Tensor:
        return torch.tensor([preference.score(question_of(p, questions), c)
                             for p, c in zip(prompts, completions, strict=True)])
    return reward


def recorded_rewards(run: Path, preferences: Sequence[Preference],
                     questions: Sequence[str]) -> dict[str, RewardFn]:
    """Per preference, the policy head of the personal reward model (the product's
    defaults) fitted on all the rankings that a ``bench.learning`` run's user with that
    preference sent, as the learner fits it (the shared part, then the user's heads)."""
    data, prefs = recorded(run)
    users = {pref.name: user for user, pref in prefs.items()}
    missing = [p.name for p in preferences if p.name not in users]
    if missing:
        raise SystemExit(f"{run} has no user who prefers {', '.join(missing)}")
    rm = PersonalRewardModel(RewardModelConfig(heldout_fraction=0.0))
    everyone = [pair for pairs in data.values() for pair in pairs]
    for pref in preferences:
        rm.train_shared(everyone)
        rm.train_user(users[pref.name], data[users[pref.name]])

    def reward(user: str) -> RewardFn:
        def score(prompts: list[str], completions: list[str]) -> torch.Tensor:
            texts = [prompt_text(chat(question_of(p, questions))) for p in prompts]
            return rm.score(user, texts, completions)
        return score

    return {pref.name: reward(users[pref.name]) for pref in preferences}


def answers(pool: PolicyPool, trainer: PPOTrainer, seeds: int, adapter: bool) -> Answers:
    """Every held-out prompt's answer under each seed, keyed (question, seed): the active
    adapter's, or the base model's with ``adapter`` False."""
    questions = eval_prompts()
    out: dict[tuple[str, int], str] = {}
    for s in range(seeds):
        with torch.no_grad(), nullcontext() if adapter else pool.model.disable_adapter():
            rollout = sample_rollout(pool.model, pool.tokenizer, [chat(q) for q in questions],
                                     trainer.generation, EVAL_SEED + s)
        out.update(((q, s), a) for q, a in zip(questions, rollout.completions, strict=True))
    return out


def base_answers(pool: PolicyPool, config: PPOConfig, seeds: int) -> Answers:
    """The base model's answers (``answers`` with the adapter off), through a throwaway
    user whose adapter wraps the model in PEFT so that it can be turned off."""
    trainer = PPOTrainer(pool, config)
    pool.activate("base")
    out = answers(pool, trainer, seeds, adapter=False)
    trainer.forget("base")
    return out


def judge(preference: Preference, adapted: Answers, base: Answers) -> dict[str, Any]:
    """The adapter's answers against the base model's under ``preference``: the tally of
    ``demo.evaluation.compare``, the mean score gain over the same keys, and the largest
    shift under a preference independent of it (``demo.evaluation.leakage``, as
    ``bench.learning`` measures it)."""
    tally = compare(preference, adapted, base)
    gains = [preference.score(q, adapted[q, s]) - preference.score(q, base[q, s])
             for q, s in base.keys() & adapted.keys()]
    leak = worst(leakage(preference, adapted, base))
    return {"tally": tally.as_dict(), "rate": tally.rate, "score_gain": statistics.fmean(gains),
            "text": fmt_rate(tally), "leak": leak.as_dict() if leak else None,
            "leak_points": abs(leak.points) if leak else 0.0}


def run_one(pool: PolicyPool, base_config: PPOConfig, setting: Setting, preference: Preference,
            seed: int, checkpoints: Sequence[int], base: Answers, eval_seeds: int,
            reward_fn: RewardFn) -> list[dict[str, Any]]:
    """One fresh adapter trained for ``checkpoints[-1]`` iterations, judged after each
    checkpoint's iteration count: one row per checkpoint (its setting named
    ``<setting> x<iterations>`` when there are several)."""
    config = setting.config(base_config, seed)
    trainer = PPOTrainer(pool, config)
    user = f"{setting.name}/{preference.name}/{seed}"
    prompts = [chat(q) for q in feedback_prompts()]
    rows, done, train_s = [], 0, 0.0
    for checkpoint in checkpoints:
        started = time.perf_counter()
        result = trainer.train_user(user, prompts, reward_fn, steps=checkpoint - done)
        train_s += time.perf_counter() - started
        done = checkpoint
        adapted = answers(pool, trainer, eval_seeds, adapter=True)
        name = checkpoint_name(setting, checkpoint, checkpoints)
        row = {"setting": name, "preference": preference.name, "repeat": seed,  # the seed
               "iterations": checkpoint, "train_s": train_s,
               "lora_parameters": sum(p.numel() for n, p in pool.model.named_parameters()
                                      if p.requires_grad and "lora_" in n),
               "iteration_s": train_s / max(result.total_steps, 1),
               "last_scores": [m.score for m in result.history[-2:]],
               "kl": result.kl, **judge(preference, adapted, base)}
        leak = row["leak"]
        print(f"  {name:14} {preference.name:14} seed {seed}: {row['text']}, "
              f"score gain {row['score_gain']:+.3f}, KL {row['kl']:.1f}, worst leak "
              f"{leak['points'] if leak else 0:+.0f} ({leak['preference'] if leak else '-'}), "
              f"{row['iteration_s']:.1f} s/iteration", flush=True)
        rows.append(row)
    trainer.forget(user)
    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--settings", default="gae:1,rloo:4",
                        help="estimator:samples_per_prompt, comma-separated; the first is "
                             "the one the others are compared with (with --combine, "
                             "estimator:samples_per_prompt@recorded names a run's settings "
                             "with the fitted reward)")
    parser.add_argument("--preferences",
                        default="formal,examples,warm,hedged,technical,second_person")
    parser.add_argument("--iterations", default="12",
                        help="PPO iterations per adapter; comma-separated checkpoints "
                             "(e.g. 12,24) judge one adapter after each")
    parser.add_argument("--seeds", default="0",
                        help="comma-separated PPO seeds: each repeats every family and setting")
    parser.add_argument("--combine", type=Path, nargs="*", default=None,
                        help="instead of running: pool the rows of these result files "
                             "(same settings and preferences, other seeds) and report them")
    parser.add_argument("--eval-seeds", type=int, default=6)
    parser.add_argument("--reward", default="oracle",
                        help="what PPO optimises: 'oracle' (the preference's noise-free "
                             "score) or 'recorded:<bench.learning run dir>' (a reward model "
                             "fitted on that run's rankings by the user of each preference)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None,
                        help="where to write the result (default bench/results/advantage.json)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    reward = "oracle" if args.reward == "oracle" else "recorded"
    settings = [Setting.parse(name, reward) for name in args.settings.split(",")]
    preferences = [PREFERENCES[name] for name in args.preferences.split(",")]
    checkpoints = sorted(int(x) for x in args.iterations.split(","))
    names = [checkpoint_name(s, k, checkpoints) for s in settings for k in checkpoints]
    if args.combine:
        rows = [row for path in args.combine for row in json.loads(path.read_text())["rows"]]
        print(report(rows, summarise(rows, names, preferences), names, preferences))
        return
    base_config = PPOConfig(max_resident_users=2)
    questions = list(feedback_prompts())
    if args.reward == "oracle":
        rewards = {p.name: oracle(p, questions) for p in preferences}
    elif args.reward.startswith("recorded:"):
        rewards = recorded_rewards(Path(args.reward.removeprefix("recorded:")), preferences,
                                   questions)
    else:
        raise SystemExit(f"--reward {args.reward!r}: 'oracle' or 'recorded:<run dir>'")
    settle()
    pools: dict[tuple[int, tuple[str, ...]], PolicyPool] = {}

    def pool_for(setting: Setting) -> PolicyPool:
        """A policy pool per LoRA shape (a pool's adapters share one LoRA config)."""
        config = setting.config(base_config, 0)
        key = (config.lora_r, config.lora_target_modules)
        if key not in pools:
            pools[key] = PolicyPool.from_pretrained(args.model, config)
        return pools[key]

    base = base_answers(pool_for(settings[0]), base_config, args.eval_seeds)
    rows: list[dict[str, Any]] = []
    for seed in (int(x) for x in args.seeds.split(",")):
        for i, preference in enumerate(preferences):
            order = settings if (i + seed) % 2 == 0 else settings[::-1]
            for setting in order:
                rows.extend(run_one(pool_for(setting), base_config, setting, preference, seed,
                                    checkpoints, base, args.eval_seeds,
                                    rewards[preference.name]))
    summary = summarise(rows, names, preferences)
    print(report(rows, summary, names, preferences))
    write_result("advantage", vars(args) | {"ppo": base_config.__dict__},
                 {"rows": rows, "summary": summary}, out=args.json)


def summarise(rows: list[dict[str, Any]], names: list[str],
              preferences: list[Preference]) -> dict[str, Any]:
    seeds = sorted({r["repeat"] for r in rows})

    def values(name: str, key: str) -> list[float]:
        """One value per (family, seed), in the same order for every setting."""
        return [r[key] for p in preferences for k in seeds for r in rows
                if (r["setting"], r["preference"], r["repeat"]) == (name, p.name, k)]

    first = names[0]
    out: dict[str, Any] = {}
    for name in names:
        out[name] = {"mean_win": statistics.fmean(values(name, "rate")),
                     "mean_score_gain": statistics.fmean(values(name, "score_gain")),
                     "mean_kl": statistics.fmean(values(name, "kl")),
                     "mean_worst_leak_points": statistics.fmean(values(name, "leak_points")),
                     "iteration_s": statistics.median(values(name, "iteration_s"))}
        if name != first:
            out[name]["win_vs_first"] = paired_difference(values(name, "rate"),
                                                          values(first, "rate"))
            out[name]["gain_vs_first"] = paired_difference(values(name, "score_gain"),
                                                           values(first, "score_gain"))
    return out


def report(rows: list[dict[str, Any]], summary: dict[str, Any], names: list[str],
           preferences: list[Preference]) -> str:
    lines = []
    for p in preferences:
        cells = [p.name]
        for name in names:
            mine = [r for r in rows if (r["setting"], r["preference"]) == (name, p.name)]
            cells.append("; ".join(f"{r['text']} ({r['score_gain']:+.2f}, KL {r['kl']:.0f})"
                                   for r in mine))
        lines.append(cells)
    headers = ["preference"] + [f"{name}: win vs base (score gain, KL)" for name in names]
    out = [table(headers, lines), ""]
    for name in names:
        row = summary[name]
        text = (f"{name}: mean win {row['mean_win']:.1%}, mean score gain "
                f"{row['mean_score_gain']:+.3f}, mean KL {row['mean_kl']:.1f}, mean worst "
                f"shift on an independent preference {row['mean_worst_leak_points']:.1f} pts, "
                f"{row['iteration_s']:.1f} s per iteration")
        if "win_vs_first" in row:
            w, g = row["win_vs_first"], row["gain_vs_first"]
            text += (f"; vs {names[0]}: win {w['mean']:+.1%} "
                     f"[{w['mean_low']:+.1%}, {w['mean_high']:+.1%}], score gain "
                     f"{g['mean']:+.3f} [{g['mean_low']:+.3f}, {g['mean_high']:+.3f}] "
                     f"(n = {int(w['n'])} family runs)")
        out.append(text)
    return "\n".join(out)


if __name__ == "__main__":
    main()
