"""Which publish rule serves a user the best adapter: the gate's decisions replayed offline
against the user's exact preference.

    python -m bench.gate --run bench/results/learning-run      # about 5 min a user, 2 cores
    python -m bench.gate --run <dir> --model .cache/test-models/tiny-llama --turns 2 \
        --users 1 --eval-seeds 1                                  # quick

For each user of a recorded ``bench.learning`` run: the user's training material as the
trainer builds it from the run's journal (the first ``--events`` feedback events, or all),
the personal reward model fitted on it as the learner fits it (the shared part on
everyone's, then the user's policy head and judge; the product's defaults), and a fresh
adapter trained by the product's PPO against the policy head for ``--turns`` turns of the
product's turn length. After each turn the candidate is sampled on the user's gate prompts
(the trainer's hash-chosen held-out prompts, ``--gate-prompts`` of them, the gate's seed and
samples per prompt); each completion is scored by the judge, by the policy head and by the
user's noise-free preference. The candidate also answers the held-out evaluation prompts of
``demo.prompts`` under ``--eval-seeds`` seeds, and its win rate against the base model
under the preference (as ``bench.learning`` judges a served version) is the truth.

Training goes on from a refused candidate, so the candidates do not depend on the gate's
decisions (the KL back-off aside: the product restarts from the served adapter after a
candidate over the KL bound; here every rule refuses it and training goes on), and every
rule is replayed over the same candidates. The base model is served first; after each turn
a rule compares the candidate's gate sample with the served version's (the product's
first ``PublishConfig.eval_prompts`` prompts of it, or all) and publishes it or not. Per
rule: the served version's win after each turn; per user its mean over the turns; the
mean over users with a t interval, and the paired difference from the product's rule
over users; how many candidates it published, how many of those lowered the served win,
and how many it refused that would have raised it by 10 points or more.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.advantage import answers, base_answers, judge, oracle
from bench.common import (
    DEFAULT_MODEL,
    means_vs_first,
    settle,
    table,
    write_result,
)
from bench.reward_replay import recorded_examples
from demo.evaluation import Answers
from demo.preferences import Preference
from demo.prompts import feedback_prompts
from trainer.config import PublishConfig, TrainerConfig
from trainer.data.examples import UserExamples
from trainer.loop.gate import held_out_sample, measure, rendered_reward
from trainer.ppo.config import PPOConfig, RewardFn
from trainer.ppo.policies import PolicyPool
from trainer.ppo.trainer import PPOTrainer
from trainer.reward.model import PersonalRewardModel

MISSED_POINTS = 0.10
"""A refused candidate whose win exceeds the served version's by this much was missed."""


@dataclass(frozen=True)
class Candidate:
    """One adapter of a user's chain (turn 0: the base model), measured."""

    turn: int
    judge: list[float]
    """(P*S,) the judge's reward of each gate completion, prompt-major."""
    policy: list[float]
    """(P*S,) the policy head's (the reward PPO optimised)."""
    exact: list[float]
    """(P*S,) the user's noise-free preference score."""
    kl: float
    """Mean per-sequence KL to the base model on the gate's prompts."""
    win: float
    """Win rate vs the base model on the evaluation prompts, under the preference."""
    text: str
    """The win with its interval and number of comparisons."""


Decide = Callable[[Candidate, Candidate], bool]
"""(served, candidate) -> publish the candidate."""


def mean_delta(key: str, served: Candidate, new: Candidate,
               n: int | None) -> tuple[float, float]:
    """The mean paired difference candidate - served of a score over the first ``n`` gate
    completions (same prompt and seed position; None: all), and its standard error."""
    diffs = [b - a for a, b in zip(getattr(served, key)[:n], getattr(new, key)[:n],
                                   strict=True)]
    mean = statistics.fmean(diffs)
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("inf")
    return mean, se


def rules(publish: PublishConfig) -> dict[str, Decide]:
    """The rules replayed. Every one also refuses a candidate over the KL bound. The
    product's rule reads the first ``publish.eval_prompts`` prompts of the gate sample; one
    rule reads all of them."""
    n = publish.eval_prompts * publish.eval_samples  # the product's gate completions

    def within_kl(rule: Decide) -> Decide:
        return lambda old, new: new.kl <= publish.kl_bound and rule(old, new)

    def delta(key: str, old: Candidate, new: Candidate, m: int | None = n) -> float:
        return mean_delta(key, old, new, m)[0]

    def policy_judge_not_worse(old: Candidate, new: Candidate) -> bool:
        judged, se = mean_delta("judge", old, new, n)
        return delta("policy", old, new) > 0 and judged > -se

    out: dict[str, Decide] = {
        "judge (product)": lambda o, c: delta("judge", o, c) > publish.min_improvement,
        "judge, every gate prompt": lambda o, c: delta("judge", o, c, None)
        > publish.min_improvement,
        "policy head": lambda o, c: delta("policy", o, c) > 0,
        "judge + policy head": lambda o, c: delta("judge", o, c) + delta("policy", o, c) > 0,
        "policy head, judge > -1 SE": policy_judge_not_worse,
        "exact preference (gate sample)": lambda o, c: delta("exact", o, c) > 0,
        "always": lambda o, c: True,
    }
    return {name: within_kl(rule) for name, rule in out.items()}


def replay(chain: Sequence[Candidate], decide: Decide) -> dict[str, Any]:
    """The rule over a user's chain (``chain[0]``: the base model, served first): the
    served win after each turn, publishes, those that lowered the served win, and
    refusals that missed ``MISSED_POINTS`` or more."""
    served, wins, published, lowered, missed = chain[0], [], 0, 0, 0
    for new in chain[1:]:
        if decide(served, new):
            published += 1
            lowered += new.win < served.win
            served = new
        else:
            missed += new.win >= served.win + MISSED_POINTS
        wins.append(served.win)
    return {"served_wins": wins, "mean_served_win": statistics.fmean(wins),
            "published": published, "lowered": lowered, "missed": missed}


def scored(sample_prompts: list[str], completions: list[str], fn: RewardFn) -> list[float]:
    with torch.no_grad():
        return torch.as_tensor(fn(sample_prompts, completions)).float().tolist()


def chain_of(pool: PolicyPool, cfg: TrainerConfig, rm: PersonalRewardModel, user: str,
             ex: UserExamples, pref: Preference, base: Answers, turns: int,
             gate_prompts: int, eval_seeds: int) -> list[Candidate]:
    """The base model and the candidate after each of ``turns`` turns of PPO, measured."""
    ppo = PPOTrainer(pool, cfg.ppo)
    prompts = held_out_sample(user, ex.eval_prompts, gate_prompts)
    policy_fn = rendered_reward(rm.score, ppo, user, ex.train_prompts)
    gate_policy = rendered_reward(rm.score, ppo, user, prompts)
    gate_judge = rendered_reward(rm.judge, ppo, user, prompts)
    exact = oracle(pref, feedback_prompts())
    chain = []
    for turn in range(turns + 1):
        if turn:
            ppo.train_user(user, ex.train_prompts, policy_fn,
                           steps=cfg.schedule.ppo_steps_per_turn)
        sampled, sample = measure(ppo, user, prompts, gate_judge, gate_policy, cfg.publish)
        adapted = answers(pool, ppo, eval_seeds, adapter=True)
        truth = judge(pref, adapted, base) if turn else {"rate": 0.5, "text": "base"}
        chain.append(Candidate(
            turn, scored(sample.prompts, sample.completions, gate_judge),
            scored(sample.prompts, sample.completions, gate_policy),
            scored(sample.prompts, sample.completions, exact),
            sampled.kl, truth["rate"], truth["text"]))
        print(f"  {user} ({pref.name}) turn {turn}: win {truth['text']}, KL {sampled.kl:.1f}, "
              f"judge {sampled.judge:+.3f}, policy {sampled.optimised:+.3f}, exact "
              f"{statistics.fmean(chain[-1].exact):+.3f}", flush=True)
    ppo.forget(user)
    return chain


def summarise(per_user: dict[str, dict[str, dict[str, Any]]],
              names: Sequence[str]) -> dict[str, Any]:
    """Per rule: the mean over users of each user's mean served win (t interval), the
    paired difference from the first rule, and the publish counts."""
    users = list(per_user)
    out = means_vs_first({u: {n: per_user[u][n]["mean_served_win"] for n in names}
                          for u in users}, names, key="mean_served_win")
    for name in names:
        out[name] |= {k: sum(per_user[u][name][k] for u in users)
                      for k in ("published", "lowered", "missed")}
    return out


def report(per_user: dict[str, dict[str, dict[str, Any]]], prefs: dict[str, Preference],
           summary: dict[str, Any], names: Sequence[str]) -> str:
    rows = [[u, prefs[u].name, *(" ".join(f"{w:.0%}" for w in per_user[u][n]["served_wins"])
                                 for n in names)] for u in per_user]
    out = [table(["user", "preference", *names], rows), ""]
    for name in names:
        s = summary[name]
        line = (f"{name}: mean served win {s['mean_served_win']:.1%} [{s['low']:.1%}, "
                f"{s['high']:.1%}] (n = {s['n_users']} users), published {s['published']}, "
                f"lowered {s['lowered']}, missed {s['missed']}")
        if "vs_first" in s:
            d = s["vs_first"]
            line += (f"; vs {names[0]}: {d['mean']:+.1%} [{d['mean_low']:+.1%}, "
                     f"{d['mean_high']:+.1%}]")
        out.append(line)
    return "\n".join(out)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, nargs="+", default=[Path("bench/results/learning-run")],
                   help="bench.learning run directories (results.json, trainer-state/)")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--events", type=int, default=None,
                   help="fit on each user's first N feedback events in the journal "
                        "(every labeler's: a user with three labelers sends three per "
                        "answer set; default: all)")
    p.add_argument("--users", type=int, default=None, help="the first N users of each run")
    p.add_argument("--turns", type=int, default=6)
    p.add_argument("--gate-prompts", type=int, default=8,
                   help="gate prompts sampled (at most the user's held-out ones); the "
                        "product's rule reads the first PublishConfig.eval_prompts of them")
    p.add_argument("--eval-seeds", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None,
                   help="where to write the result (default bench/results/gate.json)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    cfg = TrainerConfig(ppo=PPOConfig(max_resident_users=2))
    decide = rules(cfg.publish)
    names = list(decide)
    settle()
    pool = PolicyPool.from_pretrained(args.model, cfg.ppo)
    base = base_answers(pool, cfg.ppo, args.eval_seeds)
    per_user: dict[str, dict[str, dict[str, Any]]] = {}
    prefs: dict[str, Preference] = {}
    fits: dict[str, dict[str, Any]] = {}
    for run in args.run:
        examples, run_prefs = recorded_examples(run, cfg.reward.heldout_fraction,
                                                cfg.reward.seed, args.events)
        rm = PersonalRewardModel(cfg.reward)
        pairs = [p for ex in examples.values() for p in ex.pairs]
        thumbs = [t for ex in examples.values() for t in ex.thumbs]
        for user in list(examples)[:args.users]:
            ex, key = examples[user], f"{run.name}/{user}"
            rm.train_shared(pairs, thumbs)
            fit = rm.train_user(user, ex.pairs, ex.thumbs)
            fits[key] = {"preference": run_prefs[user].name, "events": ex.feedback_events,
                         "heldout_pairs": fit.n_heldout_pairs,
                         "policy_accuracy": fit.heldout_accuracy,
                         "judge_accuracy": fit.heldout_accuracy_judge,
                         "gate_prompts": min(args.gate_prompts, len(ex.eval_prompts))}
            print(f"{key} ({run_prefs[user].name}): {fits[key]}", flush=True)
            chain = chain_of(pool, cfg, rm, user, ex, run_prefs[user], base, args.turns,
                             args.gate_prompts, args.eval_seeds)
            per_user[key] = {name: replay(chain, rule) for name, rule in decide.items()}
            per_user[key]["chain"] = {"wins": [c.win for c in chain],
                                      "kl": [c.kl for c in chain]}
            prefs[key] = run_prefs[user]
    replays = {u: {n: r[n] for n in names} for u, r in per_user.items()}
    summary = summarise(replays, names)
    print(report(replays, prefs, summary, names))
    write_result("gate", {k: str(v) for k, v in vars(args).items()}
                 | {"publish": cfg.publish.__dict__, "ppo": cfg.ppo.__dict__},
                 {"users": per_user, "fits": fits, "summary": summary}, out=args.json)


if __name__ == "__main__":
    main()
