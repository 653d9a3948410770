"""Scale-out: training turns per minute with 1 and with 2 trainer processes, the
per-turn costs they imply, and the sizing model of docs/operations.md.

    python -m bench.scaleout                        # about 8 min on 2 cores
    python -m bench.scaleout --sizing-only          # the sizing table from the last JSON

Each phase starts its own local broker topics (4 partitions, so 2 trainers split
them 2 + 2) and ``--trainers`` real trainer processes (``python -m
trainer.loop.service``, 1 torch thread each) in one consumer group over one adapter
store. ``--users`` users (the same number on each partition) rank 3 answers to a
prompt of their own: ``--initial-rankings`` at the start, then one more each time
a new version of the user appears, written straight to the topics (generation
records with 32-token completions, as the server writes them). So every user is
always due, the trainers are never idle, and every turn is a feedback turn (the
reward model is refitted) on slowly growing data.
Once every trainer has completed a turn (models loaded), the trainers' own
metrics are read over ``--window`` seconds: turns completed (the
``turn_duration_seconds`` histogram), their mean wall time, CPU seconds per turn
(/proc of the trainer processes) and versions published.

What a turn is here is stated, not tuned for a figure: the policy is ``--model``
(default: the tiny 2-layer test Llama, tests/support/tiny_model.py), PPO 2
iterations of 4 rollouts x 8 tokens per turn, 2 held-out prompts x 1 sample in the
gate, the real reward model (MiniLM). The adapter size of the production model
(``--adapter-model``, SmolLM2-135M by default) is measured by exporting a fresh
adapter with the trainer's default LoRA settings through the trainer's own export.

The sizing model (``sizing_rows``) turns the measured figures and the stated usage
assumptions (flags) into partitions, trainer processes, adapter store size, GPU
adapter residency and Kafka size for 10^4, 10^5 and 10^6 users.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from kafka import KafkaProducer
from kafka.partitioner.default import murmur2

from bench.common import REPO, RESULTS, Deadline, settle, table, write_result
from services.contract.records import FeedbackRecord, GenerationRecord
from services.contract.store import AdapterStore
from services.devstack.broker import LocalBroker, free_port
from tests.support.topics import isolated_kafka, trainer_topic_env
from tests.support.trainer_proc import ALWAYS_PUBLISH, start_trainer, stop_all

PARTITIONS = 4
WORDS = ("sure", "here", "is", "a", "short", "answer", "with", "some", "detail", "about",
         "the", "question", "you", "asked", "and", "one", "example")
TURN_SETTINGS = {**ALWAYS_PUBLISH, "schedule_min_new_feedback": "1",
                 "schedule_continue_without_feedback": "false", "torch_threads": "1"}
"""A feedback turn as in tests/support/trainer_proc.py, due at every new event."""


def users_per_partition(n: int, prefix: str) -> list[str]:
    """``n`` user ids, the same number on each of the PARTITIONS partitions."""
    per, out, i = math.ceil(n / PARTITIONS), [], 0
    counts = [0] * PARTITIONS
    while len(out) < per * PARTITIONS:
        user = f"{prefix}-{i}"
        p = (murmur2(user.encode()) & 0x7FFFFFFF) % PARTITIONS
        if counts[p] < per:
            counts[p] += 1
            out.append(user)
        i += 1
    return out


def ranking_records(user: str, n: int) -> tuple[list[GenerationRecord], FeedbackRecord]:
    """Three 32-token answers to the user's ``n``-th prompt and a ranking of them."""
    group, now = f"{user}-g{n}", time.time()
    gens = [GenerationRecord(
        response_id=f"{user}-r{n}-{c}", group_id=group, user_id=user, candidate_index=c,
        num_candidates=3,
        messages=[{"role": "user", "content": f"question {n} from {user}: what should I do?"}],
        prompt_token_ids=list(range(1, 21)),
        completion=" ".join(WORDS[(c + k) % len(WORDS)] for k in range(32)),
        completion_token_ids=list(range(100, 132)), finish_reason="length",
        adapter_version="", base_model="bench", sampling={"temperature": 1.0},
        created_at=now) for c in range(3)]
    fb = FeedbackRecord(feedback_id=uuid.uuid4().hex, user_id=user, labeler_id=user,
                        kind="ranking", response_ids=[f"{user}-r{n}-{c}" for c in (2, 0, 1)],
                        group_id=group, created_at=now)
    return gens, fb


class Feeder(threading.Thread):
    """Keeps every user due: ``initial`` rankings per user at the start, then one more
    for a user each time a new version of it appears in the store (or after
    ``stall_s`` without one, e.g. a refused candidate), until stopped. So each turn
    is a feedback turn on slowly growing data, and the trainers never wait."""

    def __init__(self, kafka: Any, store: AdapterStore, users: list[str], initial: int,
                 stall_s: float = 60.0) -> None:
        super().__init__(name="feeder", daemon=True)
        self._kafka, self._store, self._users = kafka, store, users
        self._initial, self._stall_s = initial, stall_s
        self._stop_event = threading.Event()
        self.rankings = 0
        self.generation_bytes: list[int] = []
        self.feedback_bytes: list[int] = []

    def run(self) -> None:
        producer = KafkaProducer(bootstrap_servers=self._kafka.bootstrap_servers, acks="all",
                                 enable_idempotence=True, linger_ms=5)
        sent = dict.fromkeys(self._users, 0)
        seen = dict.fromkeys(self._users, 0)
        last = dict.fromkeys(self._users, 0.0)
        while not self._stop_event.is_set():
            for user in self._users:
                versions = len(self._store.versions(user))
                due = (sent[user] < self._initial or versions > seen[user]
                       or time.monotonic() - last[user] > self._stall_s)
                while due and not self._stop_event.is_set():
                    self._send(producer, user, sent[user])
                    sent[user] += 1
                    due = sent[user] < self._initial
                    seen[user], last[user] = versions, time.monotonic()
            producer.flush(timeout=30)
            self._stop_event.wait(0.5)
        producer.close(timeout=10)

    def _send(self, producer: KafkaProducer, user: str, n: int) -> None:
        gens, fb = ranking_records(user, n)
        for g in gens:
            body = g.to_json()
            self.generation_bytes.append(len(body))
            producer.send(self._kafka.generations_topic, key=user.encode(), value=body)
        body = fb.to_json()
        self.feedback_bytes.append(len(body))
        producer.send(self._kafka.feedback_topic, key=user.encode(), value=body)
        self.rankings += 1

    def stop(self) -> None:
        self._stop_event.set()


def scrape(port: int) -> dict[str, float]:
    """A trainer's metrics, samples summed over label sets."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = line.split("{")[0].split(" ")[0]
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def turns_done(port: int) -> float:
    """Turns a trainer completed so far (0 while its metrics endpoint is not up)."""
    try:
        return scrape(port).get("personalize_trainer_turn_duration_seconds_count", 0.0)
    except OSError:
        return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def version_bytes(store: AdapterStore, users: list[str]) -> float:
    """Mean size on disk of the users' latest versions (weights, value head, config,
    manifest)."""
    sizes = []
    for user in users:
        latest = store.latest(user)
        if latest:
            sizes.append(sum(f.stat().st_size for f in store.version_dir(user, latest).iterdir()))
    return sum(sizes) / len(sizes) if sizes else float("nan")


def run_phase(broker: LocalBroker, root: Path, n_trainers: int,
              args: argparse.Namespace) -> dict[str, Any]:
    """``n_trainers`` trainers on fresh topics: warm-up, then the measured window."""
    tag = f"so{n_trainers}-{uuid.uuid4().hex[:4]}"
    kafka = isolated_kafka(broker.bootstrap, tag, partitions=PARTITIONS)
    store_dir = root / tag / "store"
    store = AdapterStore(store_dir)
    users = users_per_partition(args.users, tag)
    ports = [free_port() for _ in range(n_trainers)]
    procs: list[subprocess.Popen[bytes]] = []
    feeder = Feeder(kafka, store, users, args.initial_rankings)
    started = time.monotonic()
    try:
        for i in range(n_trainers):
            procs.append(start_trainer(
                broker.bootstrap, root / tag / f"state-{i}", store_dir, f"{tag}-group",
                root / tag / f"trainer-{i}.log", policy_model=str(args.model),
                policy_model_id="bench", metrics_port=str(ports[i]),
                **{**TURN_SETTINGS, **trainer_topic_env(kafka)}))
        feeder.start()
        deadline = Deadline(args.warmup_timeout)
        while not all(turns_done(p) >= 1 for p in ports):
            for proc in procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"a trainer exited; see {root / tag}")
            if deadline.passed():
                raise RuntimeError(f"not every trainer completed a turn in "
                                   f"{args.warmup_timeout:.0f} s")
            time.sleep(1)
        warmup_s = time.monotonic() - started
        before = [scrape(p) for p in ports]
        cpu0, t0 = [cpu_seconds(p.pid) for p in procs], time.monotonic()
        time.sleep(args.window)
        after = [scrape(p) for p in ports]
        cpu1, elapsed = [cpu_seconds(p.pid) for p in procs], time.monotonic() - t0
        rss = [rss_mb(p.pid) for p in procs]
    finally:
        feeder.stop()
        stop_all(procs)
        feeder.join(timeout=30)

    def delta(name: str) -> list[float]:
        return [a.get(name, 0.0) - b.get(name, 0.0) for a, b in zip(after, before, strict=True)]

    turns = delta("personalize_trainer_turn_duration_seconds_count")
    turn_s = delta("personalize_trainer_turn_duration_seconds_sum")
    cpu = [c1 - c0 for c0, c1 in zip(cpu0, cpu1, strict=True)]
    total = sum(turns)
    return {"trainers": n_trainers, "users": len(users), "window_s": elapsed,
            "warmup_s": warmup_s, "turns": total, "turns_per_trainer": turns,
            "turns_per_min": total / elapsed * 60,
            "turn_wall_s": sum(turn_s) / total if total else float("nan"),
            "cpu_s_per_turn": sum(cpu) / total if total else float("nan"),
            "trainer_cpu_share": [c / elapsed for c in cpu],
            "published": sum(delta("personalize_trainer_adapters_published_total")),
            "turn_failures": sum(delta("personalize_trainer_turn_failures_total")),
            "rss_mb": rss, "version_bytes": version_bytes(store, users),
            "generation_record_bytes": _mean(feeder.generation_bytes),
            "feedback_record_bytes": _mean(feeder.feedback_bytes)}


def _mean(values: list[int]) -> float:
    return sum(values) / len(values) if values else float("nan")


def production_adapter_bytes(model: Path) -> dict[str, Any]:
    """Size of a fresh adapter of ``model`` with the trainer's default LoRA settings,
    written by the trainer's own export (PEFT weights + value head + config)."""
    from trainer.ppo.config import PPOConfig
    from trainer.ppo.policies import PolicyPool

    cfg = PPOConfig()
    pool = PolicyPool.from_pretrained(model, cfg)
    pool.load_adapter("sizing")
    with tempfile.TemporaryDirectory() as tmp:
        out = pool.export_adapter("sizing", Path(tmp))
        files = {f.name: f.stat().st_size for f in out.iterdir() if f.is_file()}
    return {"model": model.name, "lora_r": cfg.lora_r,
            "lora_target_modules": list(cfg.lora_target_modules), "files": files,
            "bytes": sum(files.values())}


# --- the sizing model ---------------------------------------------------------------------


def sizing_rows(result: dict[str, Any], a: argparse.Namespace) -> list[dict[str, Any]]:
    """Partitions, trainers, store, GPU residency and Kafka size per user count, from the
    measured figures in ``result`` and the usage assumptions in ``a``."""
    one = next(p for p in result["phases"] if p["trainers"] == 1)
    turn_s = one["cpu_s_per_turn"]  # one trainer process = one core (1 torch thread)
    adapter = result["production_adapter"]["bytes"]
    gen_b, fb_b = one["generation_record_bytes"], one["feedback_record_bytes"]
    rows = []
    for users in a.sizing_users:
        active = users * a.active_share
        turns_per_s = active * a.turns_per_active / 86_400 * a.peak_factor
        trainers = max(1, math.ceil(turns_per_s * turn_s / a.utilisation))
        partitions = max(12, 2 ** math.ceil(math.log2(2 * trainers)))
        versions_per_day = active * a.turns_per_active * a.publish_share
        store_now = users * adapter
        resident = max(1, math.ceil(users * a.concurrent_share))
        kafka_day = active * (a.generations_per_active * gen_b + a.events_per_active * fb_b)
        rows.append({
            "users": users, "turns_per_s_peak": turns_per_s, "trainer_processes": trainers,
            "partitions": partitions, "store_latest_gb": store_now / 1e9,
            "store_growth_gb_per_day": versions_per_day * adapter / 1e9,
            "resident_adapters": resident,
            "resident_gpu_mb": resident * adapter * a.gpu_bytes_per_stored_byte / 1e6,
            "kafka_gb_per_day": kafka_day / 1e9,
            "kafka_gb_per_year_replicated": kafka_day * 365 * a.replication / 1e9})
    return rows


def sizing_table(rows: list[dict[str, Any]]) -> str:
    return table(["users", "turns/s (peak)", "trainer procs", "partitions",
                  "store GB (latest)", "store +GB/day", "resident adapters", "GPU MB (adapters)",
                  "Kafka GB/day", "Kafka GB/year x repl."],
                 [[f"{r['users']:,}", r["turns_per_s_peak"], r["trainer_processes"],
                   r["partitions"], r["store_latest_gb"], r["store_growth_gb_per_day"],
                   r["resident_adapters"], r["resident_gpu_mb"], r["kafka_gb_per_day"],
                   r["kafka_gb_per_year_replicated"]] for r in rows])


def add_sizing_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sizing assumptions (usage, not measured)")
    g.add_argument("--sizing-users", type=lambda s: [int(x) for x in s.split(",")],
                   default=[10_000, 100_000, 1_000_000])
    g.add_argument("--active-share", type=float, default=0.2,
                   help="share of users who give feedback on a given day")
    g.add_argument("--events-per-active", type=float, default=12,
                   help="feedback events per active user per day")
    g.add_argument("--generations-per-active", type=float, default=40,
                   help="generation records per active user per day (candidates included)")
    g.add_argument("--turns-per-active", type=float, default=2,
                   help="feedback turns per active user per day (a turn at 6 new events)")
    g.add_argument("--peak-factor", type=float, default=3,
                   help="peak-hour turn rate over the daily mean")
    g.add_argument("--utilisation", type=float, default=0.5,
                   help="target busy share of a trainer core at peak")
    g.add_argument("--publish-share", type=float, default=0.5,
                   help="share of turns whose candidate the gate publishes")
    g.add_argument("--concurrent-share", type=float, default=0.01,
                   help="share of users with a request in flight at peak (resident adapters)")
    g.add_argument("--gpu-bytes-per-stored-byte", type=float, default=0.5,
                   help="GPU bytes of a loaded adapter per stored weight byte (fp32 on disk, "
                   "bf16 on the GPU)")
    g.add_argument("--replication", type=int, default=3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None,
                   help="policy model (default: the tiny test model)")
    p.add_argument("--adapter-model", type=Path,
                   default=REPO / ".cache" / "models" / "SmolLM2-135M-Instruct",
                   help="model whose default adapter size the sizing uses")
    p.add_argument("--trainers", default="1,2", help="trainer counts, one phase each")
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--initial-rankings", type=int, default=4,
                   help="rankings per user before the first turn (then one per version)")
    p.add_argument("--window", type=float, default=120.0, help="measured seconds per phase")
    p.add_argument("--warmup-timeout", type=float, default=300.0)
    p.add_argument("--sizing-only", action="store_true",
                   help="print the sizing table from --out (or bench/results/scaleout.json)")
    p.add_argument("--out", default="")
    add_sizing_flags(p)
    args = p.parse_args()
    out = Path(args.out) if args.out else RESULTS / "scaleout.json"
    result = json.loads(out.read_text()) if args.sizing_only else measure(args, out)
    rows = sizing_rows(result, args)
    print(sizing_table(rows))
    if not args.sizing_only:
        result["sizing"] = {"assumptions": {k: v for k, v in vars(args).items()
                                            if k in _SIZING_KEYS}, "rows": rows}
        out.write_text(json.dumps(result, indent=2, default=str))


_SIZING_KEYS = {"sizing_users", "active_share", "events_per_active", "generations_per_active",
                "turns_per_active", "peak_factor", "utilisation", "publish_share",
                "concurrent_share", "gpu_bytes_per_stored_byte",
                "replication"}


def measure(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    settle()
    from tests.support.tiny_model import build_tiny_model

    args.model = args.model or build_tiny_model(REPO / ".cache" / "test-models" / "tiny-llama")
    phases = []
    with tempfile.TemporaryDirectory(prefix="personalize-scaleout-") as tmp:
        broker = LocalBroker().start()
        try:
            for n in (int(x) for x in args.trainers.split(",")):
                phases.append(run_phase(broker, Path(tmp), n, args))
                print(phases[-1], flush=True)
        finally:
            broker.stop()
    adapter = production_adapter_bytes(args.adapter_model)
    print(table(["trainers", "users", "window s", "turns", "turns/min", "turn wall s",
                 "CPU s/turn", "published", "failures", "RSS MB/trainer", "version KB"],
                [[r["trainers"], r["users"], r["window_s"], int(r["turns"]),
                  r["turns_per_min"], r["turn_wall_s"], r["cpu_s_per_turn"],
                  int(r["published"]), int(r["turn_failures"]),
                  " / ".join(f"{m:.0f}" for m in r["rss_mb"]), r["version_bytes"] / 1024]
                 for r in phases]))
    base = phases[0]["turns_per_min"]
    for r in phases[1:]:
        print(f"{r['trainers']} trainers: {r['turns_per_min'] / base:.2f}x the turns per "
              f"minute of {phases[0]['trainers']} on {os.cpu_count()} CPUs")
    print(f"adapter of {adapter['model']} (r={adapter['lora_r']}, "
          f"{'/'.join(adapter['lora_target_modules'])}): {adapter['bytes'] / 1e6:.2f} MB")
    settings = {k: str(v) for k, v in vars(args).items() if k not in _SIZING_KEYS}
    settings["turn"] = TURN_SETTINGS
    path = write_result("scaleout", settings, {"phases": phases,
                                               "production_adapter": adapter}, out)
    return json.loads(path.read_text())


if __name__ == "__main__":
    main()
