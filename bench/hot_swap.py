"""Hot-swap under steady load: publish -> first request served on the new version.

    python -m bench.hot_swap          # starts a private stack; about 3 min

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
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc

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
from services.client.sdk import AssistantClient


def version_number(version: str) -> int:
    return int(version[1:]) if version.startswith("v") else 0


class Load:
    """Greedy requests in background threads, round-robin over users, counting outcomes."""

    def __init__(self, target: str, users: list[str], threads: int, tokens: int) -> None:
        self.users, self.tokens = users, tokens
        self.ok = self.failed = self.tokens_out = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._target = target
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(threads)]

    def _run(self, index: int) -> None:
        with AssistantClient(self._target, timeout_s=120) as client:
            i = index
            while not self._stop.is_set():
                user = self.users[i % len(self.users)]
                i += 1
                try:
                    out = client.complete(user, PROMPTS[i % len(PROMPTS)], max_tokens=self.tokens,
                                          temperature=0.0)
                    with self._lock:
                        self.ok += 1
                        self.tokens_out += out[0].completion_tokens
                except grpc.RpcError as exc:
                    with self._lock:
                        self.failed += 1
                        self.errors.append(f"{exc.code()}: {exc.details()}")

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=150)


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--swaps", type=int, default=40)
    p.add_argument("--swap-users", type=int, default=2, help="users whose adapter is replaced")
    p.add_argument("--load-users", type=int, default=6, help="other users with adapters")
    p.add_argument("--load-threads", type=int, default=8, help="requests in flight as load")
    p.add_argument("--load-tokens", type=int, default=32)
    p.add_argument("--gap", type=float, default=0.5, help="seconds between swaps")
    p.add_argument("--swap-timeout", type=float, default=30.0)
    p.add_argument("--max-seconds", type=float, default=180, help="no swap starts after this")
    p.add_argument("--out", default="")
    args = p.parse_args()
    settle()
    tag = f"swap{int(time.time()) % 100000}"
    swap_users = [f"{tag}-s{i}" for i in range(args.swap_users)]
    load_users = [f"{tag}-l{i}" for i in range(args.load_users)]
    rows: list[dict[str, Any]] = []
    with private_stack(args.model) as stack, tempfile.TemporaryDirectory() as tmp, \
            AssistantClient(stack.target, timeout_s=120) as client:
        names = [f"a{i}" for i in range(args.swaps + len(swap_users) + len(load_users))]
        adapters = make_adapters(Path(args.model), Path(tmp), names)
        publisher = Publisher(stack.store, stack.bootstrap, stack.model_id)
        for user, adapter in zip(swap_users + load_users, adapters, strict=False):
            publisher.publish(user, adapter)
        while any(client.status(u).adapter_version != "v1" for u in swap_users + load_users):
            time.sleep(0.2)
        budget = Deadline(args.max_seconds)
        with Load(stack.target, swap_users + load_users, args.load_threads,
                  args.load_tokens) as load:
            time.sleep(3.0)  # reach steady state
            load_start, load_ok, load_tokens = time.perf_counter(), load.ok, load.tokens_out
            loads_before = (stack.metric("personalize_server_adapter_swap_duration_seconds_sum"),
                            stack.metric("personalize_server_adapter_swap_duration_seconds_count"))
            fresh = adapters[len(swap_users) + len(load_users):]
            for i, adapter in enumerate(fresh):
                if budget.passed():
                    print(f"time budget used up after {i} swaps", flush=True)
                    break
                rows.append(swap_once(client, publisher, swap_users[i % len(swap_users)],
                                      adapter, args.swap_timeout))
                print(f"swap {i + 1}: {rows[-1]['swap_s']:.3f} s", flush=True)
                time.sleep(args.gap)
            load_s = time.perf_counter() - load_start
            load_done, tokens_done = load.ok - load_ok, load.tokens_out - load_tokens
            load_sum = stack.metric("personalize_server_adapter_swap_duration_seconds_sum")
            load_count = stack.metric("personalize_server_adapter_swap_duration_seconds_count")
            server_load_s = (load_sum - loads_before[0]) / max(1.0, load_count - loads_before[1])
        publisher.close()
    swaps = [r["swap_s"] for r in rows if r["swap_s"] == r["swap_s"]]
    summary = {
        "swaps": len(rows), "completed": len(swaps),
        "swap_p50_s": percentile(swaps, 50), "swap_p99_s": percentile(swaps, 99),
        "swap_max_s": max(swaps, default=float("nan")),
        "routed_by_p50_s": percentile([r["routed_by_s"] for r in rows
                                       if r["routed_by_s"] == r["routed_by_s"]], 50),
        "routed_by_p99_s": percentile([r["routed_by_s"] for r in rows
                                       if r["routed_by_s"] == r["routed_by_s"]], 99),
        "publish_p50_s": median([r["publish_s"] for r in rows]),
        "server_verify_load_mean_s": server_load_s,
        "probe_latency_p50_s": median([r["probe_latency_s"] for r in rows
                                       if r["probe_latency_s"] == r["probe_latency_s"]]),
        "failed_requests": load.failed + sum(r["probe_failures"] for r in rows),
        "swaps_timed_out": len(rows) - len(swaps),
        "stale_answers": sum(r["stale"] for r in rows),
        "load_requests_ok": load.ok, "load_requests_per_s": load_done / load_s,
        "load_tokens_per_s": tokens_done / load_s,
        "errors": load.errors[:10], "stack_start_s": stack.started_s,
    }
    print(table(["swaps", "p50 s", "p99 s", "max s", "routed p50/p99 s", "publish p50 s",
                 "verify+load s", "probe p50 s", "failed", "stale", "load req/s"],
                [[summary["swaps"], summary["swap_p50_s"], summary["swap_p99_s"],
                  summary["swap_max_s"],
                  f"{summary['routed_by_p50_s']:.2f}/{summary['routed_by_p99_s']:.2f}",
                  summary["publish_p50_s"], server_load_s,
                  summary["probe_latency_p50_s"], summary["failed_requests"],
                  summary["stale_answers"], summary["load_requests_per_s"]]]))
    write_result("hot_swap", vars(args), {"summary": summary, "rows": rows}, args.out or None)


if __name__ == "__main__":
    main()
