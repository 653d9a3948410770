"""Where a process spends its time (vLLM's engine, the server): py-spy samples by part.

Each sample is a Python stack; walking from the innermost frame outwards, the first
vLLM frame that belongs to a part decides (torch internals and ``_custom_ops`` wrappers
are skipped, so a matmul counts for the layer that called it). Needs the ``py-spy``
binary (the ``bench`` extra); without it the profile is empty.
"""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("LoRA kernels (punica CPU torch ops)", ("vllm/lora/ops/", "vllm/lora/punica_wrapper/")),
    ("LoRA layer wrappers", ("vllm/lora/layers/",)),
    ("LoRA bookkeeping (slots, indices)", ("vllm/lora/",)),
    ("base linear layers (GEMM)", ("model_executor/layers/linear.py",
                                   "model_executor/layers/quantization/",
                                   "model_executor/layers/utils.py")),
    ("attention", ("/attention/",)),
    ("logits + sampling", ("/sample/", "logits_processor", "vocab_parallel_embedding")),
    ("other model layers (norm, MLP act, rotary)", ("model_executor/", "vllm/ir/")),
    ("waiting for the other process (shared-memory queue spin)", ("vllm/distributed/",)),
    ("engine loop, scheduler, input preparation", ("vllm/",)),
)
SKIP = ("vllm/_custom_ops", "vllm/utils/torch_utils")
SERVER_PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Kafka client (kafka-python)", ("kafka/",)),
    ("gRPC (grpc.aio)", ("grpc/", "grpc_")),
    ("protobuf", ("google/protobuf",)),
    ("service code (services/)", ("services/",)),
    ("asyncio loop, threads, executors", ("asyncio/", "threading.py", "concurrent/", "selectors")),
)


def py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if Path(found).exists() else None


def engine_pids(root_pid: int, timeout_s: float = 10.0) -> dict[str, int]:
    """vLLM's processes among ``root_pid``'s descendants by title: the EngineCore
    (scheduler) and, with the multiprocess executor, its Worker (the model)."""
    import psutil

    deadline = time.monotonic() + timeout_s
    found: dict[str, int] = {}
    while not found and time.monotonic() < deadline:
        for child in psutil.Process(root_pid).children(recursive=True):
            try:
                title = " ".join(child.cmdline())
            except psutil.Error:
                continue
            if title.startswith("VLLM::"):
                found[title.split()[0].removeprefix("VLLM::")] = child.pid
        if not found:
            time.sleep(0.5)
    return found


def _frame_path(frame: str) -> str:
    """``"func (path/file.py:12)"`` -> ``"path/file.py"``."""
    inner = frame.rsplit(" (", 1)[-1].rstrip(")")
    return inner.rsplit(":", 1)[0]


def classify(stack: list[str], parts: tuple[tuple[str, tuple[str, ...]], ...] = PARTS
             ) -> tuple[str, str]:
    """(part, innermost frame of a part) of one sample, stack outermost first. For vLLM's
    parts only vLLM frames count; other parts look at every frame."""
    for frame in reversed(stack):
        path = _frame_path(frame)
        if parts is PARTS and ("vllm/" not in path or any(s in path for s in SKIP)):
            continue
        for part, patterns in parts:
            if any(p in path for p in patterns):
                return part, frame
    return "elsewhere (Python runtime, other libraries)", stack[-1] if stack else ""


def summarize(raw: str, parts: tuple[tuple[str, tuple[str, ...]], ...] = PARTS
              ) -> dict[str, Any]:
    """Shares of samples per part, and the innermost frames that cost most."""
    by_part: collections.Counter[str] = collections.Counter()
    frames: collections.Counter[str] = collections.Counter()
    for line in raw.splitlines():
        stack_text, _, count = line.rpartition(" ")
        if not stack_text or not count.isdigit():
            continue
        part, frame = classify(stack_text.split(";"), parts)
        by_part[part] += int(count)
        frames[frame] += int(count)
    total = sum(by_part.values()) or 1
    return {"samples": sum(by_part.values()),
            "shares": {k: round(v / total, 3) for k, v in by_part.most_common()},
            "top_frames": {k: round(v / total, 3) for k, v in frames.most_common(12)}}


def profile_engine(pids: dict[str, int], work: Callable[[], Any], rate: int = 50,
                   parts: tuple[tuple[str, tuple[str, ...]], ...] = PARTS,
                   gil: bool = False, cpu_only: dict[str, int] | None = None
                   ) -> dict[str, Any]:
    """Sample every process of ``pids`` while ``work()`` runs: {name: summary}; {} when
    py-spy is missing. ``gil``: only threads holding the GIL (Python CPU time, not
    threads blocked in C calls); each summary also has the process's CPU use in %, and
    ``cpu_only`` processes (not Python, e.g. the broker) get only that."""
    import psutil

    binary = py_spy()
    if binary is None or not pids:
        print("py-spy not installed (pip install -e '.[bench]'): no profile", flush=True)
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        outs = {name: Path(tmp) / f"{name}.txt" for name in pids}
        procs = [subprocess.Popen([binary, "record", "--format", "raw", "--rate", str(rate),
                                   "--nonblocking", "--output", str(outs[name]),
                                   "--pid", str(pid), *(["--gil"] if gil else [])],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for name, pid in pids.items()]
        time.sleep(1.0)
        watched = {name: psutil.Process(pid)
                   for name, pid in (pids | (cpu_only or {})).items()}
        for proc in watched.values():
            proc.cpu_percent(None)
        try:
            work()
            cpu = {name: proc.cpu_percent(None) for name, proc in watched.items()}
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGINT)
            for proc in procs:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        summaries = {name: summarize(out.read_text(), parts) if out.exists() else {}
                     for name, out in outs.items()}
        return {name: summaries.get(name, {}) | {"cpu_percent": cpu[name]} for name in watched}
