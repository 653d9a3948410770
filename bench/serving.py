"""Decode throughput through the public API: the base model vs 1/8/64 distinct user
adapters, same server, same prompts, greedy, in one run.

Needs a running server (``make up``) and its adapter store / Kafka. Prints a table
and writes JSON. Example:

    python bench/serving.py --server 127.0.0.1:50051 --store .cache/adapters \\
        --bootstrap 127.0.0.1:9092 --model .cache/models/SmolLM2-135M-Instruct
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from services.client import AssistantClient
from services.store import AdapterStore
from tests.support.adapters import make_adapter, publish

PROMPTS = ["Give me a tip for sleeping well.", "What is the capital of France?",
           "Write a haiku about the sea.", "How do I boil an egg?",
           "Explain recursion briefly.", "Name three fruits.", "Why is the sky blue?",
           "Suggest a name for a cat."]


def _run(client: AssistantClient, users: list[str], requests: int, tokens: int,
         concurrency: int) -> tuple[float, int]:
    def one(i: int) -> int:
        cands = client.complete(users[i % len(users)], PROMPTS[i % len(PROMPTS)],
                                max_tokens=tokens, temperature=0.0)
        return cands[0].completion_tokens

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        produced = sum(pool.map(one, range(requests)))
    return time.perf_counter() - start, produced


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--server", default="127.0.0.1:50051")
    p.add_argument("--store", default=".cache/adapters")
    p.add_argument("--bootstrap", default="127.0.0.1:9092")
    p.add_argument("--model", default=".cache/models/SmolLM2-135M-Instruct")
    p.add_argument("--model-id", default="", help="served model id (default: dir name)")
    p.add_argument("--adapters", default="1,8,64")
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--out", default="bench/results/serving.json")
    args = p.parse_args()
    model_id = args.model_id or Path(args.model).name
    store = AdapterStore(args.store)
    counts = [int(x) for x in args.adapters.split(",")]
    run_tag = f"bench{int(time.time()) % 100000}"
    rows = []
    with AssistantClient(args.server) as client, tempfile.TemporaryDirectory() as tmp:
        _run(client, ["warmup"], 8, 8, 8)
        secs, toks = _run(client, [f"{run_tag}-base"], args.requests, args.tokens,
                          args.concurrency)
        base_tps = toks / secs
        rows.append({"adapters": 0, "seconds": secs, "tokens": toks, "tokens_per_s": base_tps})
        for n in counts:
            users = [f"{run_tag}-n{n}-{i}" for i in range(n)]
            for i, user in enumerate(users):
                adapter = make_adapter(Path(args.model), Path(tmp) / user, seed=i)
                publish(store, args.bootstrap, "adapter-updates", user, adapter, model_id)
            deadline = time.time() + 120
            while any(client.status(u).adapter_version != "v1" for u in users):
                assert time.time() < deadline, "adapters were not picked up"
                time.sleep(0.5)
            secs, toks = _run(client, users, args.requests, args.tokens, args.concurrency)
            rows.append({"adapters": n, "seconds": secs, "tokens": toks,
                         "tokens_per_s": toks / secs})
    print(f"{'adapters':>8} {'tokens/s':>10} {'vs base':>8} {'seconds':>8}")
    for r in rows:
        r["ratio_vs_base"] = r["tokens_per_s"] / base_tps
        print(f"{r['adapters'] or 'base':>8} {r['tokens_per_s']:>10.1f} "
              f"{r['ratio_vs_base']:>8.2f} {r['seconds']:>8.1f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": platform.node(),
                               "cpu_count": __import__("os").cpu_count(),
                               "settings": vars(args), "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
