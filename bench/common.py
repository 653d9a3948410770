"""What the benchmarks share: a private local stack, synthetic adapters, tables and JSON.

Every benchmark starts what it needs itself on free ports with a temporary
adapter store and state directory, so it never touches a stack someone else
runs, and stops it again however the run ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.contract.records import AdapterUpdateRecord
from services.contract.store import AdapterManifest, AdapterStore
from services.devstack.broker import free_port
from services.devstack.stack import child_stack, sigterm_unwinds

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ".cache/models/SmolLM2-135M-Instruct"
RESULTS = REPO / "bench" / "results"


def cpu_pressure() -> float | None:
    """Share of the last 60 s in which some runnable task waited for a CPU (PSI), in %."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        first = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return float(dict(kv.split("=") for kv in first.split()[1:])["avg60"])
    return None


def wait_for_quiet_cpu(max_wait_s: float = 90.0, below: float = 30.0) -> float:
    """On a shared host, wait (bounded) until CPU pressure over the last 10 s is under
    ``below`` %; returns the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < max_wait_s:
        with contextlib.suppress(OSError, ValueError, IndexError, KeyError):
            first = Path("/proc/pressure/cpu").read_text().splitlines()[0]
            if float(dict(kv.split("=") for kv in first.split()[1:])["avg10"]) < below:
                break
        time.sleep(2.0)
    return time.monotonic() - start


_AT_START: dict[str, Any] = {"load_average": os.getloadavg(),
                             "cpu_pressure_avg60": cpu_pressure()}


def settle(max_wait_s: float = 90.0) -> None:
    """Call at the start of a benchmark: wait for a quieter CPU, record how busy it was."""
    waited = wait_for_quiet_cpu(max_wait_s)
    _AT_START.update(load_average=os.getloadavg(), cpu_pressure_avg60=cpu_pressure(),
                     waited_for_quiet_s=round(waited, 1))
PROMPTS = ["Give me a tip for sleeping well.", "What is the capital of France?",
           "Write a haiku about the sea.", "How do I boil an egg?",
           "Explain recursion briefly.", "Name three fruits.", "Why is the sky blue?",
           "Suggest a name for a cat."]


# --- the stack -----------------------------------------------------------------------------


@dataclass
class StackHandle:
    """A running private stack: where to reach it and what it wrote."""

    target: str
    bootstrap: str
    store: AdapterStore
    state_dir: Path
    proc: subprocess.Popen[bytes]
    model_id: str
    started_s: float
    """Seconds from launch to SERVING."""
    metrics_url: str
    """The server's Prometheus endpoint."""
    http_url: str = ""
    """The server's OpenAI-compatible HTTP API (``http://host:port``)."""

    def metric(self, name: str) -> float:
        """Sum of a server metric's samples named exactly ``name`` (all label sets)."""
        import urllib.request

        with urllib.request.urlopen(self.metrics_url, timeout=10) as reply:
            text = reply.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.split("{")[0].split(" ")[0] == name)


@contextlib.contextmanager
def private_stack(model: str, *, trainer: bool = False, env: dict[str, str] | None = None,
                  ready_timeout_s: float = 300.0, keep_dir: Path | None = None
                  ) -> Iterator[StackHandle]:
    """``personalize-stack`` on free ports with a temporary store and state directory; it
    is stopped however the block ends, SIGTERM included."""
    with sigterm_unwinds(), tempfile.TemporaryDirectory(prefix="personalize-bench-") as tmp:
        root = keep_dir or Path(tmp)
        state, store = root / "state", root / "store"
        state.mkdir(parents=True, exist_ok=True)
        port, broker, metrics, http = free_port(), free_port(), free_port(), free_port()
        args = ["--model", model,
                "--broker-port", str(broker), "--port", str(port),
                "--metrics-port", str(metrics), "--trainer-metrics-port", str(free_port()),
                "--http-port", str(http),
                "--adapter-store", str(store), "--state-dir", str(state)]
        if not trainer:
            args.append("--no-trainer")
        full_env = {**os.environ, "PERSONALIZE_TRAINER_STATE_DIR": str(state / "trainer"),
                    "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
        started, target = time.monotonic(), f"127.0.0.1:{port}"
        with child_stack(args, target, full_env, state / "stack.log", ready_timeout_s, 60.0,
                         cwd=REPO) as proc:
            yield StackHandle(target, f"127.0.0.1:{broker}", AdapterStore(store), state, proc,
                              Path(model).resolve().name, time.monotonic() - started,
                              f"http://127.0.0.1:{metrics}/metrics", f"http://127.0.0.1:{http}")


# --- synthetic adapters ---------------------------------------------------------------------


LORA_TARGETS = {
    "qv": ("q_proj", "v_proj"),
    "attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
    "all": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}
"""Named sets of a Llama block's linear layers a LoRA may adapt."""


@dataclass(frozen=True)
class LoraShape:
    """A LoRA's rank and the named set of layers it adapts (a key of ``LORA_TARGETS``)."""

    rank: int
    targets: str

    @property
    def modules(self) -> tuple[str, ...]:
        return LORA_TARGETS[self.targets]

    @property
    def name(self) -> str:
        return f"{self.rank}x{self.targets}"

    @classmethod
    def parse(cls, value: str) -> LoraShape:
        """``<rank>x<qv|attn|mlp|all>``, e.g. ``8xqv`` (the product's default) or ``2xmlp``."""
        rank, _, targets = value.partition("x")
        if not rank.isdigit() or int(rank) < 1 or targets not in LORA_TARGETS:
            raise ValueError(f"LoRA {value!r}: expected <rank>x<{'|'.join(LORA_TARGETS)}>, "
                             "e.g. 8xqv")
        return cls(int(rank), targets)


def make_adapters(base_dir: Path, out_root: Path, names: Sequence[str],
                  shape: LoraShape = LoraShape(8, "qv"), seed: int = 0) -> list[Path]:
    """PEFT adapters of ``shape`` (default rank 8 on q_proj/v_proj) with random non-zero
    weights, one per name, from a single load of the base model
    (``tests.support.adapters`` loads it per adapter)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=shape.rank, lora_alpha=2 * shape.rank,
                        target_modules=list(shape.modules), lora_dropout=0.0,
                        init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    lora = [p for n, p in peft_model.named_parameters() if "lora_" in n]
    out = []
    for i, name in enumerate(names):
        generator = torch.Generator().manual_seed(seed * 100_003 + i)
        with torch.no_grad():
            for p in lora:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
        peft_model.save_pretrained(out_root / name)
        out.append(out_root / name)
    return out


class Publisher:
    """Stores adapters as new versions and announces them on ``adapter-updates``, as the
    trainer does, over one producer."""

    def __init__(self, store: AdapterStore, bootstrap: str, base_model: str,
                 topic: str = "adapter-updates") -> None:
        from kafka import KafkaProducer

        self.store, self.base_model, self.topic = store, base_model, topic
        self._producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                       enable_idempotence=True)

    def publish(self, user_id: str, adapter_dir: Path) -> AdapterManifest:
        manifest = self.store.publish(user_id, adapter_dir, self.base_model,
                                      self.store.latest(user_id) or "")
        record = AdapterUpdateRecord(user_id=user_id, version=manifest.version,
                                     sha256=manifest.sha256, base_model=manifest.base_model,
                                     created_at=time.time())
        self._producer.send(self.topic, key=user_id.encode(),
                            value=record.to_json()).get(timeout=30)
        return manifest

    def close(self) -> None:
        self._producer.close(timeout=10)


# --- results --------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low, high = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and a t interval over rounds; the interval is nan with fewer than 2 values."""
    from scipy import stats

    mean = statistics.fmean(values) if values else float("nan")
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    spread = statistics.stdev(values) / len(values) ** 0.5
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1)) * spread
    return mean, mean - half, mean + half


def verdict(low: float, point: float, high: float, ok: Callable[[float], bool]) -> str:
    """met / not met by the point estimate, and whether the interval decides it."""
    if point != point:  # nan
        return "not measured"
    word = "met" if ok(point) else "not met"
    if low == low and ok(low) == ok(high) == ok(point):
        return word
    return word + " (interval straddles the target)"


def median_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """A distribution-free interval for the median: the order statistics (x_(k), x_(n-k+1))
    with the largest k whose binomial coverage is still at least ``level``; (nan, nan)
    when too few values reach it (fewer than 6 at 95%)."""
    from scipy.stats import binom

    ordered, n = sorted(values), len(values)
    k = 0
    while k + 1 <= n // 2 and 1 - 2 * binom.cdf(k, n, 0.5) >= level:
        k += 1
    if k == 0:
        return float("nan"), float("nan")
    return ordered[k - 1], ordered[n - k]


def machine() -> dict[str, Any]:
    """What ran the benchmark, including how busy the host was."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {"host": platform.node(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "memory_gib": round(mem_kb / 2**20, 1), "python": platform.python_version(),
            "at_start": _AT_START,
            "at_end": {"load_average": os.getloadavg(), "cpu_pressure_avg60": cpu_pressure()}}


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain fixed-width table."""
    def cell(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) and abs(v) < 1e-2 and v else (
            f"{v:,.2f}" if isinstance(v, float) else str(v))
    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def write_result(name: str, settings: dict[str, Any], payload: dict[str, Any],
                 out: str | Path | None = None) -> Path:
    """Write ``bench/results/<name>.json`` (or ``out``) with the date and the machine."""
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"benchmark": name, "date": time.strftime("%Y-%m-%d"),
            "time": time.strftime("%H:%M:%S"), "machine": machine(), "settings": settings,
            **payload}
    path.write_text(json.dumps(body, indent=2, default=str))
    print(f"wrote {path}", flush=True)
    return path


class Deadline:
    """A wall-clock budget for a whole benchmark run."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        return self._end - time.monotonic()

    def passed(self) -> bool:
        return self.left() <= 0


def paired_difference(ours: Sequence[float], theirs: Sequence[float],
                      level: float = 0.95) -> dict[str, float]:
    """Matched pairs ``ours[i] - theirs[i]``: the median difference with its distribution-free
    (sign-test) interval, the mean with a t interval, and ``n`` pairs."""
    diffs = [a - b for a, b in zip(ours, theirs, strict=True)]
    low, high = median_interval(diffs, level)
    mean, mean_low, mean_high = t_interval(diffs, level)
    return {"median": median(diffs), "low": low, "high": high, "mean": mean,
            "mean_low": mean_low, "mean_high": mean_high, "n": float(len(diffs))}


def means_vs_first(per_user: Mapping[str, Mapping[str, float]], names: Sequence[str],
                   key: str = "mean_win") -> dict[str, dict[str, Any]]:
    """Per name: the mean over users of ``per_user[user][name]`` (as ``key``, with a t
    interval ``low``/``high`` and ``n_users``) and, past the first name, the paired
    difference from the first (``vs_first``, ``paired_difference``)."""
    users = list(per_user)
    first = [per_user[u][names[0]] for u in users]
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        values = [per_user[u][name] for u in users]
        mean, low, high = t_interval(values)
        out[name] = {key: mean, "low": low, "high": high, "n_users": len(users)}
        if name != names[0]:
            out[name]["vs_first"] = paired_difference(values, first)
    return out
