"""Reward-model training throughput (trainer/reward/model.py: frozen MiniLM + heads).

    python -m bench.reward_model          # about 1-2 min

Synthetic users rank short answers; the texts are distinct, so every embedding is
computed once. Measured, each as a median of ``--repeats`` runs where cheap:

1. encode: (prompt, completion) pairs through the frozen encoder into the cache;
2. ``train_shared`` on ``--shared`` examples with a warm cache (the learner's
   default cap), ``shared_epochs`` passes: examples x epochs per second;
3. ``train_user`` on one user's ``--per-user`` examples (``user_epochs`` passes);
4. ``score`` of a PPO rollout batch (``--batch`` new completions: encoder forward).
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

import torch

from bench.common import median, settle, table, write_result
from trainer.reward.config import RewardModelConfig
from trainer.reward.data import PairExample
from trainer.reward.model import PersonalRewardModel

WORDS = ["sleep", "tea", "walk", "early", "dark", "quiet", "phone", "screen", "bed", "warm",
         "read", "breathe", "rest", "light", "routine", "water", "coffee", "noon", "stretch",
         "music", "calm", "room", "cool", "window", "shower"]


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def examples(users: int, per_user: int, seed: int = 0) -> dict[str, list[PairExample]]:
    rng = random.Random(seed)
    return {f"user-{u}": [PairExample(f"user-{u}", f"Question {u}-{i}: {sentence(rng, 8)}",
                                      sentence(rng, 12), sentence(rng, 30))
                          for i in range(per_user)]
            for u in range(users)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=int, default=2048, help="examples in train_shared")
    p.add_argument("--per-user", type=int, default=64, help="examples in train_user")
    p.add_argument("--batch", type=int, default=8, help="completions per score call")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: the trainer's setting in the local stack)")
    p.add_argument("--out", default="")
    args = p.parse_args()
    settle()
    torch.set_num_threads(args.threads)
    cfg = RewardModelConfig()
    rm = PersonalRewardModel(cfg)
    users = examples(max(1, args.shared // args.per_user), args.per_user)
    everyone = [e for ex in users.values() for e in ex][:args.shared]
    rows: list[dict[str, Any]] = []

    # 1. encode (cold cache): 2 texts per pair
    start = time.perf_counter()
    rm.encoder.embed([e.prompt for e in everyone] * 2,
                     [e.chosen for e in everyone] + [e.rejected for e in everyone])
    secs = time.perf_counter() - start
    rows.append({"step": "encode (frozen MiniLM, cold cache)", "items": 2 * len(everyone),
                 "unit": "sequences", "seconds": secs, "per_s": 2 * len(everyone) / secs})

    # 2. train_shared with a warm cache
    shared = [rm.train_shared(everyone) for _ in range(args.repeats)]
    secs = median([m.seconds for m in shared])
    work = shared[0].n_train * shared[0].epochs
    rows.append({"step": f"train_shared ({shared[0].n_train} ex x {shared[0].epochs} epochs)",
                 "items": work, "unit": "examples", "seconds": secs, "per_s": work / secs,
                 "steps": shared[0].steps})

    # 3. train_user (the user's texts are already cached)
    user, mine = next(iter(users.items()))
    personal = [rm.train_user(user, mine) for _ in range(args.repeats)]
    secs = median([m.seconds for m in personal])
    work = personal[0].n_train * personal[0].epochs
    rows.append({"step": f"train_user ({personal[0].n_train} ex x {personal[0].epochs} epochs)",
                 "items": work, "unit": "examples", "seconds": secs, "per_s": work / secs,
                 "steps": personal[0].steps})

    # 4. score a rollout batch of new completions
    rng = random.Random(1)
    times = []
    for _ in range(args.repeats):
        completions = [sentence(rng, 36) for _ in range(args.batch)]
        start = time.perf_counter()
        rm.score(user, [mine[0].prompt] * args.batch, completions)
        times.append(time.perf_counter() - start)
    secs = median(times)
    rows.append({"step": f"score a rollout batch ({args.batch} new completions)",
                 "items": args.batch, "unit": "completions", "seconds": secs,
                 "per_s": args.batch / secs})
    print(table(["step", "items", "seconds", "per second"],
                [[r["step"], f"{r['items']:,} {r['unit']}", r["seconds"], r["per_s"]]
                 for r in rows]))
    write_result("reward_model", vars(args) | {"embedding_cache_size": cfg.embedding_cache_size,
                                               "batch_size": cfg.batch_size},
                 {"rows": rows}, args.out or None)


if __name__ == "__main__":
    main()
