"""Torch threads of a trainer that shares its host with the server: one PPO iteration and
one reward-head fit timed with each thread count, while the server idles and while it
answers a steady load.

    python -m bench.trainer_threads      # SmolLM2-135M, about 25 min on 2 cores

The trainer's own code on the product's settings (``PPOConfig`` defaults with 32-token
samples, as the demo; the MiniLM reward model) runs in this process; a private stack
(server only, no trainer) runs beside it. Two conditions, one after the other: "idle"
(the server up, no requests) and "serving" (``--streams`` clients each asking for 4
candidates of 32 tokens, one request after another). In each, after an untimed warm-up of
every thread count, rounds (``--rounds`` idle, ``--serving-rounds`` serving) time one PPO
iteration (rollout, rewards, update) and one fit of a user's reward heads (``train_user``
on ``--rankings`` rankings of 4 composed answers, ranked by
the formal preference with label noise 0.2) per thread count, the counts' order
alternating round by round, and count the completions the server finished meanwhile.
Reported per condition and count: the medians, and the ratio to the first count, per
round, with the median's distribution-free 95% interval (it needs 6 rounds or more).
Serving takes one round by default: on 2 cores one 2-thread iteration there took minutes.
The load's failed requests are counted and printed (``bench.load``).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from bench.common import (
    DEFAULT_MODEL,
    median,
    median_interval,
    private_stack,
    settle,
    table,
    write_result,
)
from bench.load import Load, LoadShape
from bench.ppo import chats
from bench.reward_model import rankings as composed_rankings
from demo.preferences import PREFERENCES

CONDITIONS = ("idle", "serving")


class TrainerWork:
    """One user's PPO iteration and reward-head fit, on the trainer's own code."""

    def __init__(self, model: str, rankings: int) -> None:
        from trainer.ppo.config import PPOConfig
        from trainer.ppo.policies import PolicyPool
        from trainer.ppo.trainer import PPOTrainer
        from trainer.reward.config import RewardModelConfig
        from trainer.reward.model import PersonalRewardModel

        cfg = PPOConfig(max_new_tokens=32, max_resident_users=1)
        self.ppo = PPOTrainer(PolicyPool.from_pretrained(model, cfg), cfg)
        self.rm = PersonalRewardModel(RewardModelConfig())
        self.prompts = chats(cfg.batch_size)
        # 4 composed answers a ranking, ordered by a noisy labeler: up to 6 pairs each
        self.pairs = composed_rankings("bench-user", PREFERENCES["formal"], rankings, 4,
                                       0.2, 0)

    def ppo_iteration(self) -> None:
        self.ppo.train_user("bench-user", self.prompts,
                            lambda p, c: self.rm.score("bench-user", p, c), steps=1)

    def head_fit(self) -> None:
        self.rm.train_user("bench-user", self.pairs)


def timed(work: Callable[[], None], load: Load | None) -> tuple[float, int]:
    """Seconds of ``work`` and the completions the server finished meanwhile."""
    before = load.completions if load else 0
    start = time.perf_counter()
    work()
    return time.perf_counter() - start, (load.completions - before) if load else 0


def measure(work: TrainerWork, load: Load | None, threads: list[int], rounds: int
            ) -> list[dict[str, Any]]:
    for n in threads:  # warm-up: caches, allocator, the thread pool at this size
        torch.set_num_threads(n)
        work.ppo_iteration()
        work.head_fit()
    rows = []
    for r in range(rounds):
        for n in (threads if r % 2 == 0 else threads[::-1]):
            torch.set_num_threads(n)
            ppo_s, served = timed(work.ppo_iteration, load)
            fit_s, _ = timed(work.head_fit, load)
            rows.append({"round": r, "threads": n, "ppo_iteration_s": ppo_s,
                         "head_fit_s": fit_s, "completions_per_s": served / ppo_s,
                         "load_failed_so_far": load.failed if load else 0})
            print(rows[-1], flush=True)
    return rows


def summarise(rows: list[dict[str, Any]], threads: list[int]) -> list[dict[str, Any]]:
    out = []
    for condition in CONDITIONS:
        of = [r for r in rows if r["condition"] == condition]
        for n in threads:
            mine = sorted((r for r in of if r["threads"] == n), key=lambda r: r["round"])
            first = sorted((r for r in of if r["threads"] == threads[0]),
                           key=lambda r: r["round"])
            entry: dict[str, Any] = {"condition": condition, "threads": n}
            for key in ("ppo_iteration_s", "head_fit_s", "completions_per_s"):
                entry[key] = median([r[key] for r in mine])
                ratios = [a[key] / b[key] for a, b in zip(mine, first, strict=True) if b[key]]
                entry[f"{key}_ratio"] = median(ratios) if ratios else float("nan")
                entry[f"{key}_ratio_ci"] = median_interval(ratios) if ratios else None
            out.append(entry)
    return out


@contextlib.contextmanager
def condition_load(name: str, target: str, streams: int) -> Iterator[Load | None]:
    if name == "idle":
        yield None
        return
    shape = LoadShape(max_tokens=32, candidates=4, temperature=1.0)
    with Load(target, [f"load-{i}" for i in range(streams)], streams, shape) as load:
        time.sleep(5.0)  # the streams in flight before timing starts
        yield load


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--threads", default="1,2", help="torch thread counts, the first the "
                   "reference of the ratios")
    p.add_argument("--rounds", type=int, default=6, help="rounds with the server idle")
    p.add_argument("--serving-rounds", type=int, default=1,
                   help="rounds while it serves")
    p.add_argument("--streams", type=int, default=1, help="clients of the serving load")
    p.add_argument("--rankings", type=int, default=40)
    p.add_argument("--out", default=None)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    threads = [int(x) for x in args.threads.split(",")]
    if not threads or min(threads) < 1:
        raise SystemExit(f"--threads: positive counts, got {args.threads!r}")
    settle()
    work = TrainerWork(args.model, args.rankings)
    rows: list[dict[str, Any]] = []
    with private_stack(args.model) as stack:
        for name in CONDITIONS:
            rounds = args.rounds if name == "idle" else args.serving_rounds
            with condition_load(name, stack.target, args.streams) as load:
                rows += [{"condition": name, **r} for r in measure(work, load, threads, rounds)]
    summary = summarise(rows, threads)

    def ratio(e: dict[str, Any], key: str) -> str:
        if e[f"{key}_ratio_ci"] is None:
            return "-"
        lo, hi = e[f"{key}_ratio_ci"]
        return f"{e[f'{key}_ratio']:.2f}x [{lo:.2f}, {hi:.2f}]"

    print(table(["server", "threads", "PPO iteration s", "vs first", "head fit s",
                 "vs first", "completions/s during PPO", "vs first"],
                [[e["condition"], e["threads"], f"{e['ppo_iteration_s']:.1f}",
                  ratio(e, "ppo_iteration_s"), f"{e['head_fit_s']:.2f}",
                  ratio(e, "head_fit_s"), f"{e['completions_per_s']:.2f}",
                  ratio(e, "completions_per_s")] for e in summary]))
    failed = max((r["load_failed_so_far"] for r in rows), default=0)
    print(f"load requests that failed: {failed}")
    write_result("trainer_threads", vars(args), {"summary": summary, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
