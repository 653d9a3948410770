"""End to end: a user's feedback burst -> the trainer's turn -> publish -> the server's
first answer from the new adapter.

    python -m bench.feedback_to_adapter --open-gate   # private stack + trainer, ~4-6 min
    python -m bench.feedback_to_adapter --server HOST:PORT   # a running `make up`

The simulated user ranks 3 candidates for each of 8 prompts (24 answers, 8 ranking
events), preferring shorter answers. From the last acknowledged ranking, the user
polls with 1-token requests until one is answered by an adapter, and GetUserStatus
for the trainer's decision. If the trainer keeps its candidate back, the user sends
another burst; after a new version is served, the next burst measures the warm
trainer, until ``--publishes`` versions, ``--rounds`` bursts or ``--max-seconds``.

With ``--open-gate`` (private stack only) the publish gate accepts any candidate
within the KL bound (the judge's verdict and the degenerate-output check are off), so
the run measures the pipeline's latency rather than whether one turn of learning
happened to beat the served adapter (the learning itself is bench.learning's subject).
The trainer of a private stack loads its models on the first turn; that is part of the
first round.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench.common import (
    DEFAULT_MODEL,
    PROMPTS,
    Deadline,
    private_stack,
    settle,
    table,
    write_result,
)
from services.client.sdk import AssistantClient


def send_burst(client: AssistantClient, user: str, tokens: int) -> int:
    for prompt in PROMPTS:
        cands = client.complete(user, prompt, num_candidates=3, max_tokens=tokens,
                                temperature=1.0)
        ranked = sorted(cands, key=lambda c: len(c.text))
        client.rank(user, [c.response_id for c in ranked])
    return len(PROMPTS)


def wait_round(client: AssistantClient, user: str, before: float, served_before: str,
               budget: Deadline, poll_s: float) -> dict[str, Any]:
    """Poll until the user is answered by a new adapter version, or the trainer kept its
    candidate."""
    t0 = time.monotonic()
    decided_s: float | None = None
    status = client.status(user)
    while not budget.passed():
        served = client.complete(user, PROMPTS[0], max_tokens=1, temperature=0.0)[0]
        if served.adapter_version and served.adapter_version != served_before:
            return {"seconds_to_first_answer": time.monotonic() - t0,
                    "seconds_to_decision": decided_s, "served_version": served.adapter_version,
                    **_status_fields(client.status(user))}
        status = client.status(user)
        if status.trainer_updated_at > before and decided_s is None:
            decided_s = time.monotonic() - t0
            if not status.last_publish_decision.startswith("published"):
                break
        time.sleep(poll_s)
    return {"seconds_to_first_answer": None, "seconds_to_decision": decided_s,
            "served_version": "", **_status_fields(status)}


def _status_fields(status: Any) -> dict[str, Any]:
    return {"decision": status.last_publish_decision, "rm_accuracy": status.reward_model_accuracy,
            "reward_before": status.last_reward_before, "reward_after": status.last_reward_after,
            "kl": status.last_kl}


def run(target: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    budget = Deadline(args.max_seconds)
    rows = []
    with AssistantClient(target, timeout_s=600) as client:
        for round_no in range(1, args.rounds + 1):
            if budget.passed():
                break
            before = client.status(args.user).trainer_updated_at
            served_before = client.complete(args.user, PROMPTS[0], max_tokens=1,
                                            temperature=0.0)[0].adapter_version
            burst_start = time.monotonic()
            sent = send_burst(client, args.user, args.tokens)
            row = {"round": round_no, "feedback": sent, "served_before": served_before,
                   "burst_s": time.monotonic() - burst_start,
                   **wait_round(client, args.user, before, served_before, budget, args.poll)}
            rows.append(row)
            print(row, flush=True)
            if sum(bool(r["served_version"]) for r in rows) >= args.publishes:
                break
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", default="", help="a running stack; empty starts a private one")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--user", default=f"e2e-{int(time.time()) % 100000}")
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--rounds", type=int, default=4, help="most feedback bursts")
    p.add_argument("--publishes", type=int, default=2,
                   help="stop after this many new versions were served (the first turn of a "
                        "fresh trainer loads its models; later ones show the warm latency)")
    p.add_argument("--poll", type=float, default=0.5, help="seconds between polls")
    p.add_argument("--open-gate", action="store_true",
                   help="publish any candidate within the KL bound (private stack only)")
    p.add_argument("--ppo-steps", type=int, default=4, help="trainer PPO iterations per turn "
                   "(private stack only)")
    p.add_argument("--max-seconds", type=float, default=480, help="budget after start-up")
    p.add_argument("--out", default="")
    args = p.parse_args()
    settle()
    settings: dict[str, Any] = vars(args).copy()
    if args.server:
        rows, extra = run(args.server, args), {}
    else:
        env = {"PERSONALIZE_TRAINER_SCHEDULE_PPO_STEPS_PER_TURN": str(args.ppo_steps)}
        if args.open_gate:  # neither the judge's verdict nor the degenerate-output check
            env["PERSONALIZE_TRAINER_PUBLISH_MIN_IMPROVEMENT"] = "-1e9"
            for share in ("EMPTY", "TRUNCATED", "REPETITIVE"):
                env[f"PERSONALIZE_TRAINER_PUBLISH_MAX_{share}_SHARE"] = "1.0"
        settings["trainer_env"] = env
        with private_stack(args.model, trainer=True, env=env) as stack:
            rows, extra = run(stack.target, args), {"stack_start_s": stack.started_s}
    print(table(["round", "burst s", "s to decision", "s to first answer", "served",
                 "decision"],
                [[r["round"], r["burst_s"], r["seconds_to_decision"] or "-",
                  r["seconds_to_first_answer"] or "-", r["served_version"] or "base",
                  r["decision"]] for r in rows]))
    write_result("feedback_to_adapter", settings, {"rows": rows, **extra}, args.out or None)


if __name__ == "__main__":
    main()
