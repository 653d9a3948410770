"""Scale: trainer resident memory and per-user turn latency with 10, 100 and 1,000 users.

    python -m bench.scale          # about 5-10 min on 2 cores

The real learner (trainer/loop/learner.py) runs in this process: the real reward model
(frozen MiniLM, shared head, per-user heads, embedding cache), per-user LoRA PPO,
the publish gate and the adapter store, in a temporary state directory. Users are
added one turn at a time; each has its own prompts (3 prompts x 3 ranked answers ->
9 pairs), so every structure keyed by user or by text sees new keys. At each level
the table shows the process RSS (after a GC), the RSS once glibc has returned its
free heap pages (``malloc_trim``: what the process really holds), and the median
wall time of the last ``--window`` turns (each a new user's first turn).

Small settings keep 1,000 turns inside the budget, and are the point of the run:
the tiny test policy (a 2-layer Llama built by tests/support/tiny_model.py), PPO
with 1 iteration of 2 rollouts x 4 tokens per turn, 1 held-out sample per adapter,
a shared reward-head sample of ``--shared-cap`` examples with ``--shared-epochs``
passes, and bounds small enough to be reached within 1,000 users (an embedding
cache of ``--embedding-cache`` rows, ``--reward-heads`` resident reward heads). What
is measured is how memory and latency grow with users, not the cost of a
production turn (see bench.ppo for that).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import REPO, Deadline, median, settle, table, write_result
from services.contract.records import GenerationRecord
from services.contract.store import AdapterStore
from trainer.config import PublishConfig, ScheduleConfig, TrainerConfig
from trainer.data.examples import UserExamples, build_examples
from trainer.data.preferences import FeedbackEvent, PreferenceConfig
from trainer.ingest.journal import Joined
from trainer.loop.learner import Learner
from trainer.metrics import TrainerMetrics
from trainer.ppo.config import PPOConfig
from trainer.reward.config import RewardModelConfig

ANSWERS = ("Sure.", "Here is a short answer.", "Here is a much longer answer with detail.")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def trimmed_rss_mb() -> float:
    """RSS after glibc returns its free heap pages to the OS (``malloc_trim``): what the
    process really holds, without the allocator's retained free memory."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return float("nan")
    return rss_mb()


def user_examples(user: str, n_prompts: int = 3) -> UserExamples:
    """A user who ranked 3 answers to each of ``n_prompts`` prompts of their own."""
    joined = []
    for i in range(n_prompts):
        gens = {}
        for c, text in enumerate(ANSWERS):
            rid = f"{user}-r{i}-{c}"
            gens[rid] = GenerationRecord(
                response_id=rid, group_id=f"{user}-g{i}", user_id=user, candidate_index=c,
                num_candidates=3,
                messages=[{"role": "user", "content": f"{user} question {i}?"}],
                prompt_token_ids=[1], completion_token_ids=[2], completion=f"{text} ({user})",
                finish_reason="stop", adapter_version="", base_model="tiny", sampling={},
                created_at=1.0)
        ranking = tuple(f"{user}-r{i}-{c}" for c in (2, 1, 0))
        event = FeedbackEvent(f"{user}-f{i}", user, user, f"{user}-g{i}", "ranking", ranking,
                              None, 2.0)
        joined.append(Joined(i + 1, event, gens))
    return build_examples(user, joined, PreferenceConfig())


def learner_for(root: Path, policy: Path, args: argparse.Namespace) -> Learner:
    cfg = TrainerConfig(
        adapter_store=str(root / "store"), state_dir=str(root / "state"),
        policy_model=str(policy), policy_model_id="tiny",
        schedule=ScheduleConfig(ppo_steps_per_turn=1, min_pairs=2),
        ppo=PPOConfig(batch_size=2, mini_batch_size=2, ppo_epochs=1, max_new_tokens=4),
        publish=PublishConfig(eval_prompts=1, eval_samples=1),
        reward=RewardModelConfig(user_min_examples=4, user_max_iter=50,
                                 embedding_cache_size=args.embedding_cache,
                                 max_resident_users=args.reward_heads,
                                 shared_epochs=args.shared_epochs,
                                 shared_max_examples=args.shared_cap,
                                 shared_max_examples_per_user=args.shared_per_user))
    published = [0]

    def announce(_record: object) -> None:
        published[0] += 1

    return Learner(cfg, AdapterStore(cfg.adapter_store), TrainerMetrics(), announce)


def snapshot(learner: Learner, users: int, turn_s: list[float], window: int,
             started: float) -> dict[str, Any]:
    gc.collect()
    rm, ppo = learner._rm, learner._ppo
    assert rm is not None and ppo is not None
    rss = rss_mb()
    return {"users": users, "rss_mb": rss, "rss_trimmed_mb": trimmed_rss_mb(),
            "turn_median_s": median(turn_s[-window:]),
            "turn_max_s": max(turn_s[-window:]), "elapsed_s": time.perf_counter() - started,
            "shared_sample": len(learner._shared),
            "embedding_cache": rm.encoder.cached_entries(),
            "embedding_cache_mb": rm.encoder.cached_bytes() / 2**20,
            "reward_heads": len(rm.users.resident_users()),
            "policy_adapters": len(ppo.pool.resident_users()),
            "served_snapshots": len(learner._served)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levels", default="10,100,1000", help="user counts to report at")
    p.add_argument("--window", type=int, default=10, help="turns per latency figure")
    p.add_argument("--shared-cap", type=int, default=512, help="shared sample size")
    p.add_argument("--shared-per-user", type=int, default=32)
    p.add_argument("--shared-epochs", type=int, default=3)
    p.add_argument("--embedding-cache", type=int, default=4096,
                   help="reward-model embedding cache entries (default 20,000 in production)")
    p.add_argument("--reward-heads", type=int, default=256,
                   help="resident reward heads (default 10,000 in production)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the trainer's "
                   "default in the local stack)")
    p.add_argument("--max-seconds", type=float, default=600, help="stop adding users after")
    p.add_argument("--out", default="")
    args = p.parse_args()
    settle()
    torch.set_num_threads(args.threads)
    from tests.support.tiny_model import build_tiny_model

    policy = build_tiny_model(REPO / ".cache" / "test-models" / "tiny-llama")
    levels = sorted(int(x) for x in args.levels.split(","))
    budget = Deadline(args.max_seconds)
    rows: list[dict[str, Any]] = []
    turn_s: list[float] = []
    decisions: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="personalize-scale-") as tmp:
        learner = learner_for(Path(tmp), policy, args)
        learner.turn("warmup", user_examples("warmup"))  # loads the models
        rows.append(snapshot(learner, 0, [0.0], 1, time.perf_counter()) | {"users": 0})
        started = time.perf_counter()
        for u in range(1, levels[-1] + 1):
            if budget.passed():
                print(f"time budget used up at {u - 1} users", flush=True)
                rows.append(snapshot(learner, u - 1, turn_s, args.window, started))
                break
            user = f"user-{u:05d}"
            ex = user_examples(user)
            start = time.perf_counter()
            result = learner.turn(user, ex)
            turn_s.append(time.perf_counter() - start)
            kind = result.decision.split()[0]
            decisions[kind] = decisions.get(kind, 0) + 1
            if u in levels:
                rows.append(snapshot(learner, u, turn_s, args.window, started))
                print(rows[-1], flush=True)
    print(table(["users", "RSS MB", "RSS trimmed MB", "turn s (median)", "turn s (max)",
                 "shared sample", "emb. cache", "reward heads", "adapters"],
                [[r["users"] or "after load", r["rss_mb"], r["rss_trimmed_mb"],
                  r["turn_median_s"], r["turn_max_s"],
                  r["shared_sample"], r["embedding_cache"], r["reward_heads"],
                  r["policy_adapters"]] for r in rows]))
    write_result("scale", vars(args), {"rows": rows, "decisions": decisions,
                                       "turns": len(turn_s)}, args.out or None)


if __name__ == "__main__":
    main()
