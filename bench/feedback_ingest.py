"""Feedback ingestion: SubmitFeedback calls per second (each acknowledged only after the
broker's acks=all write) vs a raw kafka-python producer to the same broker, in one run.

    python -m bench.feedback_ingest        # starts a private stack; about 5 min

Three writers, interleaved over ``--repeats`` rounds of ``--seconds`` each (the order
of ``grpc`` and ``raw-sync`` alternates from round to round):

- ``grpc``: ``--concurrency`` client threads call SubmitFeedback (thumbs on real,
  signed response ids); every OK means the record is durably on the broker.
- ``raw-sync``: the same number of threads share one raw KafkaProducer with the
  server's settings (acks=all, idempotent, linger 2 ms) and each waits for its
  record's ack: the same guarantee per call, with no gRPC, validation or signing.
- ``raw-pipelined``: one thread sends as fast as it can and flushes at the end: the
  broker's and client's ceiling, with no per-call guarantee.
- ``producer-asyncio``: the server's own DurableProducer in this process, ``--concurrency``
  coroutines on one event loop each awaiting its record's ack: the server's Kafka path
  alone, with no gRPC, validation or signing.
- ``grpc-noop``: the same client threads call a unary grpc.aio method that returns its
  request at once, served by a Python process of its own (``--serve-noop``): what the
  gRPC transport alone costs on this host, with no Kafka and no service code.

Records of the raw writers are FeedbackRecord JSON of the same size, on the same topic.
"serving CPU ms/call" is the CPU time per call of the process that does the writer's work:
the server for ``grpc``, this process (its client threads and kafka-python) for
``raw-sync`` and ``producer-asyncio``, the no-op server for ``grpc-noop``.
The headline is ``grpc / raw-sync`` taken per round (both passes of a round run back to
back on the same host), its mean with a 95% t interval over rounds, against the >= 0.5x
target. Both processes use the same kafka-python, with the same CRC32C implementation
(the ``crc32c`` package's C code when it is installed; the JSON records which).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
from kafka import KafkaProducer

from bench.common import (
    DEFAULT_MODEL,
    PROMPTS,
    median,
    percentile,
    private_stack,
    settle,
    t_interval,
    table,
    verdict,
    write_result,
)
from bench.profile import SERVER_PARTS, profile_engine
from personalize.v1 import assistant_pb2 as pb
from services.client.sdk import AssistantClient
from services.contract.config import KafkaConfig
from services.contract.errors import Unavailable
from services.contract.records import FeedbackRecord
from services.devstack.broker import free_port, wait_for_port
from services.server.kafka_io import DurableProducer

TOPIC = "feedback"
TARGET = 0.5  # SubmitFeedback >= 0.5x the raw producer with the same guarantee per call


def crc32c_implementation() -> str:
    """What kafka-python computes record-batch checksums with in this environment."""
    return "crc32c package (C)" if importlib.util.find_spec("crc32c") else "pure Python"


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


def durable_pass(bootstrap: str, concurrency: int, seconds: float, users: list[str],
                 rids: list[str]) -> dict[str, Any]:
    """``concurrency`` coroutines, each awaiting DurableProducer.send in a loop."""
    latencies: list[float] = []
    errors = [0]

    async def run() -> float:
        producer = DurableProducer(KafkaConfig(bootstrap_servers=bootstrap))
        await producer.send(TOPIC, users[0], record_bytes(users[0], rids[0]))  # metadata
        stop = time.perf_counter() + seconds

        async def worker(i: int) -> None:
            n = 0
            while time.perf_counter() < stop:
                n += 1
                user = users[(i + n) % len(users)]
                start = time.perf_counter()
                try:
                    await producer.send(TOPIC, user, record_bytes(user, rids[n % len(rids)]))
                except Unavailable:
                    errors[0] += 1
                    continue
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - start
        await asyncio.to_thread(producer.close)
        return elapsed

    elapsed = asyncio.run(run())
    return {"calls": len(latencies), "seconds": elapsed, "per_s": len(latencies) / elapsed,
            "errors": errors[0], "p50_ms": 1000 * percentile(latencies, 50),
            "p99_ms": 1000 * percentile(latencies, 99)}


NOOP_METHOD = "/bench.Noop/Echo"


def serve_noop(port: int) -> None:
    """A grpc.aio server with one unary method that returns its request (``grpc-noop``)."""
    async def echo(request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        return request

    async def run() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "bench.Noop", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})])
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(run())


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


@contextlib.contextmanager
def noop_server() -> Any:
    """``--serve-noop`` in a child process; yields its address and pid."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.feedback_ingest", "--serve-noop",
                             str(port)])
    try:
        wait_for_port("127.0.0.1", port, 30.0)
        yield f"127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=16, help="calls in flight")
    p.add_argument("--seconds", type=float, default=10.0, help="length of one pass")
    p.add_argument("--repeats", type=int, default=5, help="rounds (>= 2 for an interval)")
    p.add_argument("--profile", action="store_true",
                   help="one more gRPC pass: CPU use of server, client and broker, and where "
                        "the server's and client's Python time goes (py-spy)")
    p.add_argument("--out", default="")
    p.add_argument("--serve-noop", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_noop:
        serve_noop(args.serve_noop)
        return
    settle()
    tag = f"fb{int(time.time()) % 100000}"
    users = [f"{tag}-{i}" for i in range(args.users)]
    passes: dict[str, list[dict[str, Any]]] = {
        "grpc": [], "raw-sync": [], "raw-pipelined": [], "producer-asyncio": [],
        "grpc-noop": []}
    with private_stack(args.model) as stack, noop_server() as (noop_target, noop_pid):
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

        noop_channels = [grpc.insecure_channel(noop_target) for _ in range(args.concurrency)]
        noop_calls = [ch.unary_unary(NOOP_METHOD) for ch in noop_channels]
        payload = pb.FeedbackRequest(  # the bytes of a real thumbs request
            user_id=users[0], thumbs=pb.Thumbs(response_id=rids[0], up=True)).SerializeToString()

        def via_noop(i: int) -> None:
            noop_calls[i](payload, timeout=30)

        via_grpc(0)  # warm up the paths
        via_raw(0)
        via_noop(0)
        # the process that serves each writer, whose CPU time per call is recorded
        server = server_pid(stack.proc.pid, "services.server.main") or os.getpid()
        serving = {"grpc": server, "raw-sync": os.getpid(), "grpc-noop": noop_pid,
                   "producer-asyncio": os.getpid()}

        def measured(name: str, call: Callable[[int], None] | None) -> None:
            cpu = cpu_seconds(serving[name])
            result = (timed_threads(args.concurrency, args.seconds, call) if call else
                      durable_pass(stack.bootstrap, args.concurrency, args.seconds, users, rids))
            result["serving_cpu_ms_per_call"] = (
                1000 * (cpu_seconds(serving[name]) - cpu) / max(1, result["calls"]))
            passes[name].append(result)

        for repeat in range(args.repeats):
            order = [("raw-sync", via_raw), ("grpc", via_grpc)]
            for name, call in order if repeat % 2 == 0 else order[::-1]:
                measured(name, call)
            passes["raw-pipelined"].append(pipelined(stack.bootstrap, args.seconds, users, rids))
            measured("producer-asyncio", None)
            measured("grpc-noop", via_noop)
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
        for ch in noop_channels:
            ch.close()
    rows = []
    grpc_rate = median([x["per_s"] for x in passes["grpc"]])
    for name, ps in passes.items():
        rate = median([x["per_s"] for x in ps])
        cpu = [x["serving_cpu_ms_per_call"] for x in ps if "serving_cpu_ms_per_call" in x]
        rows.append({"writer": name, "per_s": rate, "grpc_vs_this": grpc_rate / rate,
                     "serving_cpu_ms_per_call": median(cpu) if cpu else float("nan"),
                     "p50_ms": median([x["p50_ms"] for x in ps]),
                     "p99_ms": median([x["p99_ms"] for x in ps]),
                     "errors": sum(x["errors"] for x in ps), "passes": ps})
    print(table(["writer", "records/s", "grpc / this", "serving CPU ms/call", "p50 ms",
                 "p99 ms", "errors"],
                [[r["writer"], r["per_s"], r["grpc_vs_this"], r["serving_cpu_ms_per_call"],
                  r["p50_ms"], r["p99_ms"], r["errors"]] for r in rows]))
    ratios = [g["per_s"] / r["per_s"] for g, r in zip(passes["grpc"], passes["raw-sync"],
                                                      strict=True)]
    mean, low, high = t_interval(ratios)
    ratio = {"per_round": ratios, "mean": mean, "low": low, "high": high, "target": TARGET,
             "verdict": verdict(low, mean, high, lambda x: x >= TARGET)}
    print(f"\nSubmitFeedback / raw-sync per round: {', '.join(f'{x:.2f}' for x in ratios)}; "
          f"mean {mean:.2f}, 95% interval [{low:.2f}, {high:.2f}]; target >= {TARGET}x: "
          f"{ratio['verdict']} (CRC32C: {crc32c_implementation()})")
    floor = [n["per_s"] / r["per_s"] for n, r in zip(passes["grpc-noop"], passes["raw-sync"],
                                                      strict=True)]
    f_mean, f_low, f_high = t_interval(floor)
    ratio["noop_grpc_vs_raw_sync"] = {"per_round": floor, "mean": f_mean, "low": f_low,
                                      "high": f_high}
    print(f"no-op gRPC / raw-sync per round: {', '.join(f'{x:.2f}' for x in floor)}; "
          f"mean {f_mean:.2f}, 95% interval [{f_low:.2f}, {f_high:.2f}]")
    own = [d["per_s"] / r["per_s"] for d, r in zip(passes["producer-asyncio"],
                                                    passes["raw-sync"], strict=True)]
    o_mean, o_low, o_high = t_interval(own)
    ratio["producer_asyncio_vs_raw_sync"] = {"per_round": own, "mean": o_mean, "low": o_low,
                                             "high": o_high}
    print(f"DurableProducer (asyncio) / raw-sync per round: "
          f"{', '.join(f'{x:.2f}' for x in own)}; "
          f"mean {o_mean:.2f}, 95% interval [{o_low:.2f}, {o_high:.2f}]")
    for name, prof in profile.items():
        print(f"\n{name}: {prof['cpu_percent']:.0f}% CPU")
        if "shares" not in prof:
            continue
        print(f"Python time (GIL held) by part ({prof['samples']} samples)")
        print(table(["part", "share"], [[k, v] for k, v in prof["shares"].items()]))
    write_result("feedback_ingest", {**vars(args), "crc32c": crc32c_implementation()},
                 {"rows": rows, "ratio_grpc_vs_raw_sync": ratio, "profile": profile,
                  "stack_start_s": stack.started_s},
                 args.out or None)


if __name__ == "__main__":
    main()
