"""Decode throughput through the public API: the base model vs 1, 8 and 64 distinct user
adapters, same prompts, greedy, side by side in one run, with the project's CPU LoRA ops
(``fast``, services/server/lora_cpu_ops.py) and with vLLM's own (``vllm``).

    python -m bench.serving                      # two private stacks (about 10-12 min)
    python -m bench.serving --ops fast           # one stack, ours only
    python -m bench.serving --server HOST:PORT --store DIR --bootstrap HOST:PORT
    python -m bench.serving --ops fast --lora 8xqv,2xmlp --max-cpu-loras 160

The adapters are random LoRAs of each ``--lora`` shape (rank x layer set: ``qv``, ``attn``,
``mlp`` or ``all``; default the trainer's, rank 8 on q_proj/v_proj), a distinct set per
shape and count, all of them held in the engine's adapter cache (``--max-cpu-loras``;
the run is refused otherwise, since reloads would be timed).

One private stack per ``--ops`` value (``EngineConfig.lora_cpu_ops``), both up for the
whole run, the same adapter files published to each. Every user's adapter is published
(store + ``adapter-updates``) and loaded by its server before timing; a short warm-up
pass activates them in the engine. Each pass sends ``--requests`` requests with
``--concurrency`` in flight, users round-robin, and passes are interleaved (fast: base,
1, 8, 64; vllm: base, 1, 8, 64; fast: base, ...) ``--repeats`` times so a busy host
affects every setting alike, with a pause before each switch of stack (an idle vLLM
engine busy-polls for about a second after its last request); the table shows the
median pass and its ratio to the same stack's base model. With ``--profile`` (and
py-spy installed) one more base pass and one pass at the largest adapter count are
sampled in each stack's vLLM engine processes, to show where the time goes.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    DEFAULT_MODEL,
    PROMPTS,
    Deadline,
    LoraShape,
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


SWITCH_PAUSE_S = 1.5
"""Pause before a pass on another stack than the last: an idle vLLM engine busy-polls
for about a second after its last request, which would slow the next stack's pass."""


@dataclass
class Target:
    """One server under test: ``ops`` is its engine's lora_cpu_ops ("" if unknown)."""

    ops: str
    address: str
    store: AdapterStore
    bootstrap: str
    model_id: str
    engine: dict[str, int]


def prepare_users(client: AssistantClient, target: Target, adapters: dict[str, Path]) -> None:
    """Publish every user's adapter to ``target``; wait until all are served."""
    publisher = Publisher(target.store, target.bootstrap, target.model_id)
    for user, adapter in adapters.items():
        publisher.publish(user, adapter)
    publisher.close()
    deadline = time.monotonic() + 180
    while pending := [u for u in adapters if client.status(u).adapter_version != "v1"]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} adapters were not picked up")
        time.sleep(0.5)


Group = tuple[str, int]
"""A pass's users: the LoRA shape's name and the adapter count (``("", 0)``: the base)."""
BASE: Group = ("", 0)


def summarise(passes: dict[Group, list[dict[str, float]]]) -> list[dict[str, Any]]:
    """One row per LoRA shape and adapter count: median pass, and its ratio to the base
    model's."""
    base = median([p["tokens_per_s"] for p in passes[BASE]])
    rows = []
    for (lora, n), ps in passes.items():
        tps = median([p["tokens_per_s"] for p in ps])
        rows.append({"lora": lora, "adapters": n, "tokens_per_s": tps,
                     "ratio_vs_base": tps / base,
                     "latency_p50_s": median([p["latency_p50_s"] for p in ps]),
                     "latency_p99_s": median([p["latency_p99_s"] for p in ps]),
                     "passes": ps})
    return rows


def user_groups(tag: str, shapes: list[LoraShape], counts: list[int]) -> dict[Group, list[str]]:
    """The base model's user, then ``n`` distinct users per shape and count."""
    return {BASE: [f"{tag}-base"]} | {
        (shape.name, n): [f"{tag}-{shape.name}-n{n}-{i}" for i in range(n)]
        for shape in shapes for n in counts}


def measure(args: argparse.Namespace, targets: list[Target], shapes: list[LoraShape],
            counts: list[int]) -> dict[str, Any]:
    groups = user_groups(f"serve{int(time.time()) % 100000}", shapes, counts)
    budget = Deadline(args.max_seconds)
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(AssistantClient(t.address, timeout_s=600))
                   for t in targets]
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        adapters: dict[str, Path] = {}
        for shape in shapes:
            names = [u for n in counts for u in groups[(shape.name, n)]]
            adapters |= dict(zip(names, make_adapters(Path(args.model), tmp, names, shape),
                                 strict=True))
        for client, target in zip(clients, targets, strict=True):
            prepare_users(client, target, adapters)
            for users in groups.values():  # warm-up: every adapter activated once
                run_pass(client, users, max(len(users), 8), 4, args.concurrency)
        passes: list[dict[Group, list[dict[str, float]]]] = [{g: [] for g in groups}
                                                             for _ in targets]
        for repeat in range(args.repeats):
            if repeat and budget.passed():
                print("time budget used up: fewer repeats", flush=True)
                break
            for k, (client, target) in enumerate(zip(clients, targets, strict=True)):
                if len(targets) > 1:
                    time.sleep(SWITCH_PAUSE_S)
                for (lora, n), users in groups.items():
                    passes[k][(lora, n)].append(run_pass(client, users, args.requests,
                                                         args.tokens, args.concurrency))
                    print(f"repeat {repeat + 1} ops {target.ops or 'server'} "
                          f"{f'{n} {lora} adapters' if n else 'base'}: "
                          f"{passes[k][(lora, n)][-1]['tokens_per_s']:.1f} tokens/s", flush=True)
        profiles: dict[str, Any] = {}
        if args.profile:
            largest = (shapes[0].name, max(counts))
            for client, target in zip(clients, targets, strict=True):
                if not target.engine:
                    continue
                time.sleep(SWITCH_PAUSE_S)
                for group in (BASE, largest):
                    profiles[f"{target.ops}:{group[1]}"] = profile_engine(
                        target.engine, lambda g=group, c=client: run_pass(
                            c, groups[g], args.requests, args.tokens, args.concurrency))
    return {"by_ops": [{"ops": t.ops, "rows": summarise(p)}
                       for t, p in zip(targets, passes, strict=True)],
            "rows": summarise(passes[0]), "profile": profiles}


def print_tables(result: dict[str, Any]) -> None:
    """The throughput table (every stack's rows) and any profiles."""
    rows = [[block["ops"] or "server", r["lora"] or "-", r["adapters"] or "base",
             r["tokens_per_s"], r["ratio_vs_base"], r["latency_p50_s"], r["latency_p99_s"],
             len(r["passes"])]
            for block in result["by_ops"] for r in block["rows"]]
    print(table(["lora ops", "lora", "adapters", "tokens/s", "vs base", "p50 s", "p99 s",
                 "passes"], rows))
    for key, by_process in result["profile"].items():
        for name, prof in by_process.items():
            if "shares" not in prof:
                continue
            ops, n = key.split(":")
            print(f"\n{name} process, ops {ops}, {n if n != '0' else 'base'} adapters: "
                  f"samples by part ({prof['samples']} samples)")
            print(table(["part", "share"], [[k, v] for k, v in prof["shares"].items()]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--server", default="", help="a running server; empty starts a private stack")
    p.add_argument("--store", default=".cache/adapters", help="its adapter store (--server)")
    p.add_argument("--bootstrap", default="127.0.0.1:9092", help="its Kafka (--server)")
    p.add_argument("--model-id", default="", help="served model id (default: dir name)")
    p.add_argument("--adapters", default="1,8,64")
    p.add_argument("--lora", default="8xqv",
                   help="adapter shapes, <rank>x<qv|attn|mlp|all>, comma-separated (each is "
                        "timed at every --adapters count, interleaved)")
    p.add_argument("--requests", type=int, default=64, help="requests per pass")
    p.add_argument("--tokens", type=int, default=48, help="max_tokens per request (greedy)")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max-loras", type=int, default=64, help="engine: adapters per batch")
    p.add_argument("--max-cpu-loras", type=int, default=96, help="engine: adapters cached")
    p.add_argument("--dtype", default="", help="engine dtype (default: the server's, auto)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment of the private stack (e.g. VLLM_CPU_OMP_THREADS_BIND)")
    p.add_argument("--profile", action="store_true",
                   help="sample the engine with py-spy (base, and the first shape's largest count)")
    p.add_argument("--ops", default="fast,vllm",
                   help="CPU LoRA ops, one private stack each (EngineConfig.lora_cpu_ops)")
    p.add_argument("--max-seconds", type=float, default=600,
                   help="no new repeat starts after this (start-up excluded)")
    p.add_argument("--out", default="")
    args = p.parse_args()
    try:
        shapes = [LoraShape.parse(x) for x in args.lora.split(",")]
    except ValueError as e:
        p.error(str(e))
    counts = [int(x) for x in args.adapters.split(",")]
    adapters = len(shapes) * sum(counts)
    if not args.server and adapters > args.max_cpu_loras:
        p.error(f"{adapters} adapters do not fit the engine's cache (--max-cpu-loras "
                f"{args.max_cpu_loras}): they would be evicted and reloaded within the timed "
                "passes; raise --max-cpu-loras")
    settle()
    settings = vars(args).copy()
    if args.server:
        model_id = args.model_id or Path(args.model).resolve().name
        result = measure(args, [Target("", args.server, AdapterStore(args.store),
                                       args.bootstrap, model_id, {})], shapes, counts)
    else:
        env = {"PERSONALIZE_SERVER_ENGINE_MAX_LORAS": str(args.max_loras),
               "PERSONALIZE_SERVER_ENGINE_MAX_CPU_LORAS": str(args.max_cpu_loras),
               "PERSONALIZE_SERVER_ENGINE_MAX_NUM_SEQS": str(max(64, args.concurrency))}
        if args.dtype:
            env["PERSONALIZE_SERVER_ENGINE_DTYPE"] = args.dtype
        env |= dict(item.split("=", 1) for item in args.env)
        settings["engine_env"] = env
        with contextlib.ExitStack() as stacks:
            targets, started = [], {}
            for ops in args.ops.split(","):
                handle = stacks.enter_context(private_stack(
                    args.model, env=env | {"PERSONALIZE_SERVER_ENGINE_LORA_CPU_OPS": ops}))
                targets.append(Target(ops, handle.target, handle.store, handle.bootstrap,
                                      handle.model_id, engine_pids(handle.proc.pid)))
                started[ops] = handle.started_s
            result = measure(args, targets, shapes, counts)
            result["stack_start_s"] = started
    print_tables(result)
    write_result("serving", settings, result, args.out or None)


if __name__ == "__main__":
    main()
