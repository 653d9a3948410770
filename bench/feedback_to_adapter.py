"""End to end on a running stack (``make up``): a user's feedback burst -> the
trainer publishes -> the server's first answer from the new adapter.

The simulated user ranks 3 candidates per prompt, preferring shorter answers.
If the trainer keeps its candidate back, the user sends another round. Prints
a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from services.client import AssistantClient

PROMPTS = ["Give me a tip for sleeping well.", "What is the capital of France?",
           "Write a haiku about the sea.", "How do I boil an egg?",
           "Explain recursion briefly.", "Name three fruits.", "Why is the sky blue?",
           "Suggest a name for a cat."]


def send_round(client: AssistantClient, user: str, tokens: int) -> int:
    for prompt in PROMPTS:
        cands = client.complete(user, prompt, num_candidates=3, max_tokens=tokens,
                                temperature=1.0)
        ranked = sorted(cands, key=lambda c: len(c.text))
        client.rank(user, [c.response_id for c in ranked])
    return len(PROMPTS)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--server", default="127.0.0.1:50051")
    p.add_argument("--user", default=f"e2e-{int(time.time()) % 100000}")
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--round-timeout", type=float, default=900.0)
    p.add_argument("--out", default="bench/results/feedback_to_adapter.json")
    args = p.parse_args()
    rows = []
    with AssistantClient(args.server, timeout_s=600) as client:
        for round_no in range(1, args.rounds + 1):
            sent = send_round(client, args.user, args.tokens)
            t0 = time.monotonic()
            before = client.status(args.user).trainer_updated_at
            while True:
                status = client.status(args.user)
                if status.trainer_updated_at > before or \
                        time.monotonic() - t0 > args.round_timeout:
                    break
                time.sleep(2)
            served = client.complete(args.user, PROMPTS[0], max_tokens=args.tokens,
                                     temperature=0.0)[0]
            rows.append({"round": round_no, "feedback": sent,
                         "seconds_to_decision": time.monotonic() - t0,
                         "decision": status.last_publish_decision,
                         "served_version": served.adapter_version,
                         "rm_accuracy": status.reward_model_accuracy,
                         "reward_before": status.last_reward_before,
                         "reward_after": status.last_reward_after, "kl": status.last_kl})
            print(rows[-1], flush=True)
            if served.adapter_version:
                break
    print(f"{'round':>5} {'s to decision':>14} {'served':>7}  decision")
    for r in rows:
        print(f"{r['round']:>5} {r['seconds_to_decision']:>14.1f} "
              f"{r['served_version'] or 'base':>7}  {r['decision']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": platform.node(),
                               "settings": vars(args), "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
