"""Feedback ingestion: SubmitFeedback calls per second (each acknowledged only after the
broker's acks=all write) vs a raw kafka-python producer to the same broker, in one run.

    python -m bench.feedback_ingest        # starts a private stack; about 2 min

Three writers, interleaved over ``--repeats`` rounds of ``--seconds`` each:

- ``grpc``: ``--concurrency`` client threads call SubmitFeedback (thumbs on real,
  signed response ids); every OK means the record is durably on the broker.
- ``raw-sync``: the same number of threads share one raw KafkaProducer with the
  server's settings (acks=all, idempotent, linger 2 ms) and each waits for its
  record's ack: the same guarantee per call, with no gRPC, validation or signing.
- ``raw-pipelined``: one thread sends as fast as it can and flushes at the end: the
  broker's and client's ceiling, with no per-call guarantee.

Records of the raw writers are FeedbackRecord JSON of the same size, on the same topic.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from kafka import KafkaProducer

from bench.common import (
    DEFAULT_MODEL,
    PROMPTS,
    median,
    percentile,
    private_stack,
    settle,
    table,
    write_result,
)
from bench.profile import SERVER_PARTS, profile_engine
from services.client.sdk import AssistantClient
from services.contract.records import FeedbackRecord

TOPIC = "feedback"


def timed_threads(n: int, seconds: float, call: Callable[[int], None]) -> dict[str, Any]:
    """Run ``call(thread_index)`` in a loop on ``n`` threads for ``seconds``."""
    latencies: list[list[float]] = [[] for _ in range(n)]
    errors = [0] * n
    stop = threading.Event()

    def worker(i: int) -> None:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                call(i)
            except Exception:  # noqa: BLE001 - counted, the run goes on
                errors[i] += 1
                continue
            latencies[i].append(time.perf_counter() - start)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    elapsed = time.perf_counter() - start
    flat = [x for per in latencies for x in per]
    return {"calls": len(flat), "seconds": elapsed, "per_s": len(flat) / elapsed,
            "errors": sum(errors), "p50_ms": 1000 * percentile(flat, 50),
            "p99_ms": 1000 * percentile(flat, 99)}


def server_pid(root_pid: int, needle: str) -> int | None:
    """The pid of the stack's child process whose command line holds ``needle``."""
    import psutil

    for child in psutil.Process(root_pid).children(recursive=True):
        try:
            if needle in " ".join(child.cmdline()):
                return child.pid
        except psutil.Error:
            continue
    return None


def record_bytes(user: str, response_id: str) -> bytes:
    return FeedbackRecord(feedback_id=uuid.uuid4().hex, user_id=user, labeler_id=user,
                          kind="thumbs", response_ids=[response_id], group_id=uuid.uuid4().hex,
                          created_at=time.time(), up=True).to_json()


def raw_producer(bootstrap: str) -> KafkaProducer:
    """A raw producer with the server's settings (services.server.kafka_io.DurableProducer)."""
    return KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                         linger_ms=2)


def pipelined(bootstrap: str, seconds: float, users: list[str], rids: list[str]
              ) -> dict[str, Any]:
    producer = raw_producer(bootstrap)
    sent, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(100):
            user = users[sent % len(users)]
            value = record_bytes(user, rids[sent % len(rids)])
            producer.send(TOPIC, key=user.encode(), value=value)
            sent += 1
    producer.flush(timeout=60)
    elapsed = time.perf_counter() - start
    producer.close(timeout=10)
    return {"calls": sent, "seconds": elapsed, "per_s": sent / elapsed, "errors": 0,
            "p50_ms": float("nan"), "p99_ms": float("nan")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=16, help="calls in flight")
    p.add_argument("--seconds", type=float, default=10.0, help="length of one pass")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--profile", action="store_true",
                   help="one more gRPC pass: CPU use of server, client and broker, and where "
                        "the server's and client's Python time goes (py-spy)")
    p.add_argument("--out", default="")
    args = p.parse_args()
    settle()
    tag = f"fb{int(time.time()) % 100000}"
    users = [f"{tag}-{i}" for i in range(args.users)]
    passes: dict[str, list[dict[str, Any]]] = {"grpc": [], "raw-sync": [], "raw-pipelined": []}
    with private_stack(args.model) as stack:
        # 1. real, signed response ids to rate (a user may rate a response more than once)
        responses: dict[str, list[str]] = {}
        with AssistantClient(stack.target) as client:
            for i, user in enumerate(users):
                cands = client.complete(user, PROMPTS[i % len(PROMPTS)], num_candidates=2,
                                        max_tokens=1, temperature=1.0)
                responses[user] = [c.response_id for c in cands]
        clients = [AssistantClient(stack.target, feedback_retries=0)
                   for _ in range(args.concurrency)]
        producer = raw_producer(stack.bootstrap)
        rids = [r for rs in responses.values() for r in rs]
        counter = [0] * args.concurrency

        def via_grpc(i: int) -> None:
            counter[i] += 1
            user = users[(i + counter[i]) % len(users)]
            clients[i].thumbs(user, responses[user][counter[i] % 2], up=bool(counter[i] % 2))

        def via_raw(i: int) -> None:
            counter[i] += 1
            user = users[(i + counter[i]) % len(users)]
            producer.send(TOPIC, key=user.encode(),
                          value=record_bytes(user, responses[user][0])).get(timeout=30)

        via_grpc(0)  # warm up both paths
        via_raw(0)
        for repeat in range(args.repeats):
            passes["raw-sync"].append(timed_threads(args.concurrency, args.seconds, via_raw))
            passes["grpc"].append(timed_threads(args.concurrency, args.seconds, via_grpc))
            passes["raw-pipelined"].append(pipelined(stack.bootstrap, args.seconds, users, rids))
            print(f"repeat {repeat + 1}: " + ", ".join(
                f"{k} {v[-1]['per_s']:.0f}/s" for k, v in passes.items()), flush=True)
        profile = {}
        if args.profile:
            pids = {"server": server_pid(stack.proc.pid, "services.server.main"),
                    "client (this process)": os.getpid()}
            broker = server_pid(stack.proc.pid, "tansu")
            profile = profile_engine(
                {k: v for k, v in pids.items() if v}, lambda: timed_threads(
                    args.concurrency, args.seconds, via_grpc), parts=SERVER_PARTS, gil=True,
                cpu_only={"broker": broker} if broker else None)
        producer.close(timeout=10)
        for c in clients:
            c.close()
    rows = []
    grpc_rate = median([x["per_s"] for x in passes["grpc"]])
    for name, ps in passes.items():
        rate = median([x["per_s"] for x in ps])
        rows.append({"writer": name, "per_s": rate, "grpc_vs_this": grpc_rate / rate,
                     "p50_ms": median([x["p50_ms"] for x in ps]),
                     "p99_ms": median([x["p99_ms"] for x in ps]),
                     "errors": sum(x["errors"] for x in ps), "passes": ps})
    print(table(["writer", "records/s", "grpc / this", "p50 ms", "p99 ms", "errors"],
                [[r["writer"], r["per_s"], r["grpc_vs_this"], r["p50_ms"], r["p99_ms"],
                  r["errors"]] for r in rows]))
    for name, prof in profile.items():
        print(f"\n{name}: {prof['cpu_percent']:.0f}% CPU")
        if "shares" not in prof:
            continue
        print(f"Python time (GIL held) by part ({prof['samples']} samples)")
        print(table(["part", "share"], [[k, v] for k, v in prof["shares"].items()]))
    write_result("feedback_ingest", vars(args), {"rows": rows, "profile": profile,
                                                 "stack_start_s": stack.started_s},
                 args.out or None)


if __name__ == "__main__":
    main()
