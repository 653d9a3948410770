"""Decode throughput through the public API: the base model vs 1, 8 and 64 distinct user
adapters, same engine, same prompts, greedy, side by side in one run.

    python -m bench.serving                      # starts a private stack (about 4-6 min)
    python -m bench.serving --server HOST:PORT --store DIR --bootstrap HOST:PORT

Every user's adapter is published (store + ``adapter-updates``) and loaded by the
server before timing; a short warm-up pass activates them in the engine. Each pass
sends ``--requests`` requests with ``--concurrency`` in flight, users round-robin, and
passes are interleaved (base, 1, 8, 64, base, ...) ``--repeats`` times so a busy host
affects every setting alike; the table shows the median pass. With ``--profile`` (and
py-spy installed) one more base pass and one pass at the largest adapter count are
sampled in vLLM's engine process, to show where the time goes.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import (
    DEFAULT_MODEL,
    PROMPTS,
    Deadline,
    Publisher,
    make_adapters,
    median,
    percentile,
    private_stack,
    settle,
    table,
    write_result,
)
from bench.profile import engine_pids, profile_engine
from services.client.sdk import AssistantClient
from services.contract.store import AdapterStore


def run_pass(client: AssistantClient, users: list[str], requests: int, tokens: int,
             concurrency: int) -> dict[str, float]:
    """One timed pass: tokens/s over the whole pass and per-request latency."""
    def one(i: int) -> tuple[int, float]:
        start = time.perf_counter()
        cands = client.complete(users[i % len(users)], PROMPTS[i % len(PROMPTS)],
                                max_tokens=tokens, temperature=0.0)
        return cands[0].completion_tokens, time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(requests)))
    seconds = time.perf_counter() - start
    produced = sum(n for n, _ in results)
    latencies = [s for _, s in results]
    return {"seconds": seconds, "tokens": produced, "tokens_per_s": produced / seconds,
            "latency_p50_s": percentile(latencies, 50), "latency_p99_s": percentile(latencies, 99)}


def prepare_users(client: AssistantClient, store: AdapterStore, bootstrap: str, model: Path,
                  model_id: str, counts: list[int], tag: str) -> dict[int, list[str]]:
    """Publish one distinct adapter per user of every setting; wait until all are served."""
    groups = {n: [f"{tag}-n{n}-{i}" for i in range(n)] for n in counts}
    everyone = [u for users in groups.values() for u in users]
    publisher = Publisher(store, bootstrap, model_id)
    with tempfile.TemporaryDirectory() as tmp:
        for user, adapter in zip(everyone, make_adapters(model, Path(tmp), everyone),
                                 strict=True):
            publisher.publish(user, adapter)
    publisher.close()
    deadline = time.monotonic() + 180
    while pending := [u for u in everyone if client.status(u).adapter_version != "v1"]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} adapters were not picked up")
        time.sleep(0.5)
    return groups


def measure(args: argparse.Namespace, target: str, store: AdapterStore, bootstrap: str,
            model_id: str, engine: dict[str, int]) -> dict[str, Any]:
    counts = [int(x) for x in args.adapters.split(",")]
    tag = f"serve{int(time.time()) % 100000}"
    budget = Deadline(args.max_seconds)
    with AssistantClient(target, timeout_s=600) as client:
        groups = {0: [f"{tag}-base"]} | prepare_users(
            client, store, bootstrap, Path(args.model), model_id, counts, tag)
        for users in groups.values():  # warm-up: every adapter activated once
            run_pass(client, users, max(len(users), 8), 4, args.concurrency)
        passes: dict[int, list[dict[str, float]]] = {n: [] for n in groups}
        for repeat in range(args.repeats):
            if repeat and budget.passed():
                print("time budget used up: fewer repeats", flush=True)
                break
            for n, users in groups.items():
                passes[n].append(run_pass(client, users, args.requests, args.tokens,
                                          args.concurrency))
                print(f"repeat {repeat + 1} adapters {n or 'base'}: "
                      f"{passes[n][-1]['tokens_per_s']:.1f} tokens/s", flush=True)
        profiles = {}
        if args.profile and engine:
            for n in (0, max(counts)):
                profiles[str(n)] = profile_engine(engine, lambda n=n: run_pass(
                    client, groups[n], args.requests, args.tokens, args.concurrency))
    base = median([p["tokens_per_s"] for p in passes[0]])
    rows = []
    for n, ps in passes.items():
        tps = median([p["tokens_per_s"] for p in ps])
        rows.append({"adapters": n, "tokens_per_s": tps, "ratio_vs_base": tps / base,
                     "latency_p50_s": median([p["latency_p50_s"] for p in ps]),
                     "latency_p99_s": median([p["latency_p99_s"] for p in ps]),
                     "passes": ps})
    return {"rows": rows, "profile": profiles}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--server", default="", help="a running server; empty starts a private stack")
    p.add_argument("--store", default=".cache/adapters", help="its adapter store (--server)")
    p.add_argument("--bootstrap", default="127.0.0.1:9092", help="its Kafka (--server)")
    p.add_argument("--model-id", default="", help="served model id (default: dir name)")
    p.add_argument("--adapters", default="1,8,64")
    p.add_argument("--requests", type=int, default=64, help="requests per pass")
    p.add_argument("--tokens", type=int, default=48, help="max_tokens per request (greedy)")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max-loras", type=int, default=64, help="engine: adapters per batch")
    p.add_argument("--max-cpu-loras", type=int, default=96, help="engine: adapters cached")
    p.add_argument("--dtype", default="", help="engine dtype (default: the server's, auto)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment of the private stack (e.g. VLLM_CPU_OMP_THREADS_BIND)")
    p.add_argument("--profile", action="store_true", help="sample the engine with py-spy")
    p.add_argument("--max-seconds", type=float, default=300,
                   help="no new repeat starts after this (start-up excluded)")
    p.add_argument("--out", default="")
    args = p.parse_args()
    settle()
    settings = vars(args).copy()
    if args.server:
        model_id = args.model_id or Path(args.model).resolve().name
        result = measure(args, args.server, AdapterStore(args.store), args.bootstrap, model_id,
                         {})
    else:
        env = {"PERSONALIZE_SERVER_ENGINE_MAX_LORAS": str(args.max_loras),
               "PERSONALIZE_SERVER_ENGINE_MAX_CPU_LORAS": str(args.max_cpu_loras),
               "PERSONALIZE_SERVER_ENGINE_MAX_NUM_SEQS": str(max(64, args.concurrency))}
        if args.dtype:
            env["PERSONALIZE_SERVER_ENGINE_DTYPE"] = args.dtype
        env |= dict(item.split("=", 1) for item in args.env)
        settings["engine_env"] = env
        with private_stack(args.model, env=env) as stack:
            result = measure(args, stack.target, stack.store, stack.bootstrap, stack.model_id,
                             engine_pids(stack.proc.pid))
            result["stack_start_s"] = stack.started_s
    print(table(["adapters", "tokens/s", "vs base", "p50 s", "p99 s", "passes"],
                [[r["adapters"] or "base", r["tokens_per_s"], r["ratio_vs_base"],
                  r["latency_p50_s"], r["latency_p99_s"], len(r["passes"])]
                 for r in result["rows"]]))
    for n, by_process in result["profile"].items():
        for name, prof in by_process.items():
            if "shares" not in prof:
                continue
            print(f"\n{name} process, {n if n != '0' else 'base'} adapters: samples by part "
                  f"({prof['samples']} samples)")
            print(table(["part", "share"], [[k, v] for k, v in prof["shares"].items()]))
    write_result("serving", settings, result, args.out or None)


if __name__ == "__main__":
    main()
