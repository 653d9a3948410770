"""When a user's training should start: the online schedule replayed offline, the reward
model refitted before each turn on the feedback the user had sent by then.

    python -m bench.schedule --run bench/results/learning-run \
        --schedule early=16,32,48,64,80,96 --schedule late=48,64,80,96   # ~6 min a user
    python -m bench.schedule --run <dir> --model .cache/test-models/tiny-llama \
        --schedule a=8,16 --schedule b=16 --users 1 --eval-seeds 1      # quick

Online, a user's first PPO turn starts once the user has sent ``ScheduleConfig.min_pairs``
pairs, and every later turn refits the reward model on the feedback that arrived in
between, so the first turns optimise a reward model fitted on a few rankings. Whether
those turns help (more iterations) or hurt (iterations spent on a poor reward, KL spent
before the reward model is good) is what this measures.

For each recorded user of a ``bench.learning`` run and each ``--schedule`` (a name and the
user's feedback events at each turn, counted over every labeler's events in journal
order, as ``bench.gate --events`` counts them): a fresh adapter; before each turn, the
training material of the user's first n events as the trainer builds it, the shared part
of the reward model trained on every user's first n events of that run, then the user's
heads (the product's defaults: the learner's steps); then one turn of the product's PPO
(``ScheduleConfig.ppo_steps_per_turn`` iterations) on that material's training prompts
against the policy head. After the last turn (and, with ``--every-turn``, after each),
the candidate answers the held-out evaluation prompts of ``demo.prompts`` under
``--eval-seeds`` seeds; its win rate against the base model under the user's noise-free
preference (as ``bench.learning`` judges a served version) is the result. The gate is
not replayed (``bench.gate``: the publish rule is worth about 2 points): the figure is
the chain's last candidate. Every schedule starts from the same adapter initialisation
and the same PPO seeds, so schedules are paired per user: the mean over users with a t
interval, and each schedule's paired difference from the first.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

from bench.advantage import answers, base_answers, judge
from bench.common import DEFAULT_MODEL, means_vs_first, settle, table, write_result
from bench.reward_replay import recorded_examples
from demo.evaluation import Answers
from demo.preferences import Preference
from trainer.config import TrainerConfig
from trainer.data.examples import UserExamples
from trainer.loop.gate import rendered_reward
from trainer.ppo.config import PPOConfig
from trainer.ppo.policies import PolicyPool
from trainer.ppo.trainer import PPOTrainer
from trainer.reward.encoder import TextEncoder
from trainer.reward.model import PersonalRewardModel


@dataclass(frozen=True)
class Schedule:
    name: str
    events: tuple[int, ...]
    """The user's feedback events (every labeler's) the reward model is fitted on before
    each turn; one turn per entry."""


def parse_schedule(text: str) -> Schedule:
    """``name=n1,n2,...`` with positive, non-decreasing event counts."""
    name, sep, counts = text.partition("=")
    try:
        events = tuple(int(c) for c in counts.split(","))
    except ValueError:
        events = ()
    if not sep or not name or not events or min(events) < 1 or list(events) != sorted(events):
        raise argparse.ArgumentTypeError(
            f"schedule {text!r}: expected name=n1,n2,... (positive, non-decreasing)")
    return Schedule(name, events)


Material = Callable[[int], tuple[dict[str, UserExamples], dict[str, Preference]]]
"""n -> every user's training material from a run's first n events, and their preferences."""


def chain(material: Material, user: str, schedule: Schedule, pool: PolicyPool,
          cfg: TrainerConfig, encoder: TextEncoder, base: Answers, eval_seeds: int,
          every_turn: bool) -> tuple[list[dict[str, Any]], Preference]:
    """One user's adapter trained turn by turn under ``schedule``: per turn, the events,
    the reward model's held-out accuracy and the rollout KL; the win vs base after the
    last turn (or every one)."""
    rm = PersonalRewardModel(cfg.reward, encoder)  # fresh heads, the frozen encoder shared
    ppo = PPOTrainer(pool, cfg.ppo)
    torch.manual_seed(0)  # the same LoRA and value-head initialisation for every schedule
    ppo.pool.activate(user)
    rows: list[dict[str, Any]] = []
    pref: Preference | None = None
    for turn, n in enumerate(schedule.events, start=1):
        examples, prefs = material(n)
        ex, pref = examples[user], prefs[user]
        rm.train_shared([p for e in examples.values() for p in e.pairs],
                        [t for e in examples.values() for t in e.thumbs])
        fit = rm.train_user(user, ex.pairs, ex.thumbs)
        reward = rendered_reward(rm.score, ppo, user, ex.train_prompts)
        result = ppo.train_user(user, ex.train_prompts, reward,
                                steps=cfg.schedule.ppo_steps_per_turn)
        row = {"turn": turn, "events": ex.feedback_events, "pairs": len(ex.pairs),
               "policy_accuracy": fit.heldout_accuracy, "heldout_pairs": fit.n_heldout_pairs,
               "kl": result.kl}
        if every_turn or turn == len(schedule.events):
            truth = judge(pref, answers(pool, ppo, eval_seeds, adapter=True), base)
            row |= {"win": truth["rate"], "text": truth["text"]}
        rows.append(row)
        print(f"  {user} ({pref.name}) {schedule.name} turn {turn}: {row}", flush=True)
    ppo.forget(user)
    assert pref is not None  # a schedule has at least one turn
    return rows, pref


def summarise(finals: dict[str, dict[str, float]], names: list[str]) -> dict[str, Any]:
    """Per schedule: the mean final win over users (t interval) and the paired difference
    from the first schedule."""
    return means_vs_first(finals, names)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, nargs="+", default=[Path("bench/results/learning-run")],
                   help="bench.learning run directories (results.json, trainer-state/)")
    p.add_argument("--schedule", type=parse_schedule, action="append", required=True,
                   help="name=n1,n2,...: the user's feedback events at each turn")
    p.add_argument("--only", default="", help="comma-separated users (default: every one)")
    p.add_argument("--users", type=int, default=None, help="the first N users of each run")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--eval-seeds", type=int, default=4)
    p.add_argument("--every-turn", action="store_true", help="judge every turn's candidate")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None,
                   help="where to write the result (default bench/results/schedule.json)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    cfg = TrainerConfig(ppo=PPOConfig(max_resident_users=2))
    names = [s.name for s in args.schedule]
    only = set(filter(None, args.only.split(",")))
    settle()
    pool = PolicyPool.from_pretrained(args.model, cfg.ppo)
    base = base_answers(pool, cfg.ppo, args.eval_seeds)
    encoder = PersonalRewardModel(cfg.reward).encoder
    per_user: dict[str, dict[str, Any]] = {}
    finals: dict[str, dict[str, float]] = {}
    for run in args.run:
        # the journal read once per event count, whichever schedules and users ask for it
        material: Material = cache(lambda n, run=run: recorded_examples(
            run, cfg.reward.heldout_fraction, cfg.reward.seed, n))
        users = list(material(1)[1])[:args.users]
        for user in (u for u in users if not only or u in only):
            key = f"{run.name}/{user}"
            per_user[key] = {}
            # interleaved: the schedules' order alternates from one user to the next
            order = args.schedule if len(per_user) % 2 else args.schedule[::-1]
            for schedule in order:
                rows, pref = chain(material, user, schedule, pool, cfg, encoder, base,
                                   args.eval_seeds, args.every_turn)
                per_user[key] |= {"preference": pref.name, schedule.name: rows}
            finals[key] = {n: per_user[key][n][-1]["win"] for n in names}
    summary = summarise(finals, names)
    print(table(["user", "preference", *names],
                [[u, per_user[u]["preference"],
                  *(per_user[u][n][-1]["text"] for n in names)] for u in per_user]))
    for name in names:
        s = summary[name]
        line = (f"{name}: mean final win {s['mean_win']:.1%} [{s['low']:.1%}, {s['high']:.1%}]"
                f" (n = {s['n_users']} users)")
        if "vs_first" in s:
            d = s["vs_first"]
            line += (f"; vs {names[0]}: {d['mean']:+.1%} [{d['mean_low']:+.1%}, "
                     f"{d['mean_high']:+.1%}]")
        print(line)
    write_result("schedule", {k: str(v) for k, v in vars(args).items()}
                 | {"ppo": cfg.ppo.__dict__, "schedule": cfg.schedule.__dict__},
                 {"users": per_user, "summary": summary}, out=args.json)


if __name__ == "__main__":
    main()
