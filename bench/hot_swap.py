"""Hot-swap under steady load: publish -> first request served on the new version.

    python -m bench.hot_swap             # one private stack per --ops; about 6 min
    python -m bench.hot_swap --ops fast  # the project's CPU LoRA ops only; about 3 min

One private stack per ``--ops`` value (``EngineConfig.lora_cpu_ops``: ``fast``, the
project's CPU LoRA ops, the server's default and the headline; ``vllm``, vLLM's own),
both up for the whole run; they take turns of ``--block`` swaps, the load running on
one stack at a time and the order of the stacks alternating from turn to turn, and
every stack gets the same adapter files in the same order.

Background threads keep the server busy with greedy requests for several users
with adapters, the swapped users among them, so old versions are in flight while
new ones arrive. Each swap publishes a new adapter version the way the trainer
does (store write + ``adapter-updates``, acks=all), then a probe sends 1-token
requests for that user back to back until one is answered by the new version.

Reported per swap: ``publish_s`` (store write + broker ack), ``swap_s`` (start of
the publish -> the first answer from the new version, as a client sees it, so one
1-token request's latency under load is part of it) and ``routed_by_s`` (when that
request was sent: the server routed it to the new version after this, and the
probe before it, sent earlier, still met the old one). Failed requests are any RPC error
of the load or the probes; ``stale`` counts answers from an older version after the
new one was seen (a routing regression).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench.common import (
    DEFAULT_MODEL,
    PROMPTS,
    Publisher,
    StackHandle,
    cpu_pressure,
    make_adapters,
    median,
    percentile,
    private_stack,
    settle,
    table,
    write_result,
)
from bench.load import Load, LoadShape
from services.client.sdk import AssistantClient


def version_number(version: str) -> int:
    return int(version[1:]) if version.startswith("v") else 0


def swap_once(client: AssistantClient, publisher: Publisher, user: str, adapter: Path,
              timeout_s: float) -> dict[str, Any]:
    """Publish one version and probe until it answers."""
    t0 = time.perf_counter()
    manifest = publisher.publish(user, adapter)
    published = time.perf_counter() - t0
    want = version_number(manifest.version)
    probes = failed = stale = 0
    seen_s = probe_s = routed_s = float("nan")
    while time.perf_counter() - t0 < timeout_s:
        sent = time.perf_counter()
        try:
            got = client.complete(user, PROMPTS[0], max_tokens=1, temperature=0.0)[0]
        except grpc.RpcError:
            failed += 1
            continue
        probes += 1
        if version_number(got.adapter_version) >= want:
            seen_s, probe_s = time.perf_counter() - t0, time.perf_counter() - sent
            routed_s = sent - t0  # the request that met the new version had left by then
            break
    # after the new version answered, no request may be answered by an older one
    for _ in range(3):
        try:
            got = client.complete(user, PROMPTS[1], max_tokens=1, temperature=0.0)[0]
            stale += version_number(got.adapter_version) < want
        except grpc.RpcError:
            failed += 1
    return {"user": user, "version": manifest.version, "publish_s": published,
            "swap_s": seen_s, "routed_by_s": routed_s, "probe_latency_s": probe_s,
            "probes": probes,
            "probe_failures": failed, "stale": stale}


@dataclass
class Arm:
    """One private stack under test: its engine's ``lora_cpu_ops``, its users, its swaps."""

    ops: str
    stack: StackHandle
    client: AssistantClient
    publisher: Publisher
    swap_users: list[str]
    load_users: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    blocks: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    spent_s: float = 0.0


def run_block(arm: Arm, adapters: list[Path], args: argparse.Namespace) -> None:
    """Load on this arm's stack only, then ``len(adapters)`` swaps, one after another."""
    start = time.perf_counter()
    pressure = cpu_pressure()
    metric = "personalize_server_adapter_swap_duration_seconds"
    shape = LoadShape(max_tokens=args.load_tokens)
    with Load(arm.stack.target, arm.swap_users + arm.load_users, args.load_threads, shape,
              timeout_s=120.0) as load:
        time.sleep(3.0)  # reach steady state
        load_start, load_ok, load_tokens = time.perf_counter(), load.requests, load.tokens_out
        before = arm.stack.metric(f"{metric}_sum"), arm.stack.metric(f"{metric}_count")
        for adapter in adapters:
            user = arm.swap_users[len(arm.rows) % len(arm.swap_users)]
            arm.rows.append(swap_once(arm.client, arm.publisher, user, adapter,
                                      args.swap_timeout) | {"ops": arm.ops})
            print(f"ops {arm.ops} swap {len(arm.rows)}: {arm.rows[-1]['swap_s']:.3f} s",
                  flush=True)
            time.sleep(args.gap)
        load_s = time.perf_counter() - load_start
        load_done, tokens_done = load.requests - load_ok, load.tokens_out - load_tokens
        after = arm.stack.metric(f"{metric}_sum"), arm.stack.metric(f"{metric}_count")
    arm.errors += load.errors
    arm.blocks.append({"swaps": len(adapters), "cpu_pressure_avg60_at_start": pressure,
                       "cpu_pressure_avg60_at_end": cpu_pressure(),
                       "load_requests_ok": load_done, "load_failed": load.failed,
                       "load_tokens": tokens_done, "load_s": load_s,
                       "server_swap_sum_s": after[0] - before[0],
                       "server_swap_count": after[1] - before[1]})
    arm.spent_s += time.perf_counter() - start


def summarise(arm: Arm, stack_start_s: float) -> dict[str, Any]:
    rows, blocks = arm.rows, arm.blocks
    swaps = [r["swap_s"] for r in rows if r["swap_s"] == r["swap_s"]]
    routed = [r["routed_by_s"] for r in rows if r["routed_by_s"] == r["routed_by_s"]]
    load_s = sum(b["load_s"] for b in blocks) or float("nan")
    pressures = [p for b in blocks for p in (b["cpu_pressure_avg60_at_start"],
                                               b["cpu_pressure_avg60_at_end"])
                 if p is not None]
    return {
        "ops": arm.ops, "swaps": len(rows), "completed": len(swaps),
        "swap_p50_s": percentile(swaps, 50), "swap_p99_s": percentile(swaps, 99),
        "swap_max_s": max(swaps, default=float("nan")),
        "routed_by_p50_s": percentile(routed, 50), "routed_by_p99_s": percentile(routed, 99),
        "publish_p50_s": median([r["publish_s"] for r in rows]),
        "server_verify_load_mean_s": sum(b["server_swap_sum_s"] for b in blocks)
        / max(1.0, sum(b["server_swap_count"] for b in blocks)),
        "probe_latency_p50_s": median([r["probe_latency_s"] for r in rows
                                       if r["probe_latency_s"] == r["probe_latency_s"]]),
        "failed_requests": sum(b["load_failed"] for b in blocks)
        + sum(r["probe_failures"] for r in rows),
        "swaps_timed_out": len(rows) - len(swaps),
        "stale_answers": sum(r["stale"] for r in rows),
        "load_requests_ok": sum(b["load_requests_ok"] for b in blocks),
        "load_requests_per_s": sum(b["load_requests_ok"] for b in blocks) / load_s,
        "load_tokens_per_s": sum(b["load_tokens"] for b in blocks) / load_s,
        "cpu_pressure_avg60_min": min(pressures, default=None),
        "cpu_pressure_avg60_max": max(pressures, default=None),
        "errors": arm.errors[:10], "stack_start_s": stack_start_s,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--ops", default="fast,vllm",
                   help="CPU LoRA ops, one private stack each (EngineConfig.lora_cpu_ops); "
                        "the first is the headline")
    p.add_argument("--swaps", type=int, default=40, help="swaps per stack")
    p.add_argument("--block", type=int, default=10,
                   help="swaps per turn: stacks take turns, the load on one at a time")
    p.add_argument("--swap-users", type=int, default=2, help="users whose adapter is replaced")
    p.add_argument("--load-users", type=int, default=6, help="other users with adapters")
    p.add_argument("--load-threads", type=int, default=8, help="requests in flight as load")
    p.add_argument("--load-tokens", type=int, default=32)
    p.add_argument("--gap", type=float, default=0.5, help="seconds between swaps")
    p.add_argument("--swap-timeout", type=float, default=30.0)
    p.add_argument("--max-seconds", type=float, default=180,
                   help="per stack: no turn starts once its turns took this long")
    p.add_argument("--out", default="")
    args = p.parse_args()
    settle()
    tag = f"swap{int(time.time()) % 100000}"
    swap_users = [f"{tag}-s{i}" for i in range(args.swap_users)]
    load_users = [f"{tag}-l{i}" for i in range(args.load_users)]
    ops_list = [o for o in args.ops.split(",") if o]
    arms: list[Arm] = []
    started: dict[str, float] = {}
    with contextlib.ExitStack() as stacks:
        tmp = Path(stacks.enter_context(tempfile.TemporaryDirectory()))
        names = [f"a{i}" for i in range(args.swaps + len(swap_users) + len(load_users))]
        adapters = make_adapters(Path(args.model), tmp, names)
        fresh = adapters[len(swap_users) + len(load_users):]  # the same swaps on every stack
        for ops in ops_list:
            stack = stacks.enter_context(private_stack(
                args.model, env={"PERSONALIZE_SERVER_ENGINE_LORA_CPU_OPS": ops}))
            client = stacks.enter_context(AssistantClient(stack.target, timeout_s=120))
            publisher = Publisher(stack.store, stack.bootstrap, stack.model_id)
            stacks.callback(publisher.close)
            for user, adapter in zip(swap_users + load_users, adapters, strict=False):
                publisher.publish(user, adapter)
            while any(client.status(u).adapter_version != "v1" for u in swap_users + load_users):
                time.sleep(0.2)
            arms.append(Arm(ops, stack, client, publisher, swap_users, load_users))
            started[ops] = stack.started_s
        for turn in range(0, len(fresh), max(1, args.block)):
            # alternate which stack goes first, so neither always follows the other's load
            for arm in arms if (turn // max(1, args.block)) % 2 == 0 else arms[::-1]:
                if arm.spent_s >= args.max_seconds:
                    print(f"ops {arm.ops}: time budget used up after {len(arm.rows)} swaps",
                          flush=True)
                    continue
                run_block(arm, fresh[turn:turn + max(1, args.block)], args)
                time.sleep(2.0)  # let the stopped load's last requests drain
    by_ops = [summarise(arm, started[arm.ops]) for arm in arms]
    print(table(["lora ops", "swaps", "p50 s", "p99 s", "max s", "routed p50/p99 s",
                 "publish p50 s", "verify+load s", "probe p50 s", "failed", "stale",
                 "load req/s", "pressure %"],
                [[s["ops"], s["swaps"], s["swap_p50_s"], s["swap_p99_s"], s["swap_max_s"],
                  f"{s['routed_by_p50_s']:.2f}/{s['routed_by_p99_s']:.2f}",
                  s["publish_p50_s"], s["server_verify_load_mean_s"],
                  s["probe_latency_p50_s"], s["failed_requests"], s["stale_answers"],
                  s["load_requests_per_s"],
                  f"{s['cpu_pressure_avg60_min']}-{s['cpu_pressure_avg60_max']}"]
                 for s in by_ops]))
    write_result("hot_swap", vars(args),
                 {"summary": by_ops[0], "by_ops": by_ops,
                  "blocks": {arm.ops: arm.blocks for arm in arms},
                  "rows": [r for arm in arms for r in arm.rows]}, args.out or None)

if __name__ == "__main__":
    main()
