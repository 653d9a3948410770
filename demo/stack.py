"""The demo's own local stack: ``personalize-stack`` in a child process, on its own
ports and folders, with trainer settings sized for a short run on a small CPU host."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

from services.devstack.stack import child_stack


@dataclass(frozen=True)
class StackPorts:
    grpc: int
    metrics: int
    trainer_metrics: int
    broker: int

    @classmethod
    def from_base(cls, base: int) -> StackPorts:
        return cls(base, base + 1, base + 2, base + 3)


@dataclass(frozen=True)
class TrainerProfile:
    """What the demo sets on the trainer beyond the product's defaults, which are the
    settings it runs with (one profile for the product and the demo): only the length of
    the samples, kept equal to the answers the users rate, and the threads."""

    ppo_max_new_tokens: int = 32
    torch_threads: int = 1
    """The server shares the host, as under ``make up`` (which also gives the trainer one
    thread): on 2 cores, where vLLM's worker holds one core and its engine loop the other,
    a 2-thread trainer waits at every parallel region for its thread on the busy core
    (bench.trainer_threads, docs/benchmarks.md)."""

    def env(self) -> dict[str, str]:
        return {f"PERSONALIZE_TRAINER_{f.name.upper()}": str(getattr(self, f.name))
                for f in fields(self)}


@contextlib.contextmanager
def demo_stack(model: str, out: Path, ports: StackPorts, profile: TrainerProfile,
               ready_timeout_s: float = 600.0) -> Iterator[str]:
    """The stack on ``ports`` with its store and logs under ``out``; yields the gRPC
    target once it is SERVING and stops everything on exit."""
    logs = out / "stack"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **profile.env(),
           "PERSONALIZE_TRAINER_STATE_DIR": str(out / "trainer-state")}
    argv = ["--model", model, "--port", str(ports.grpc), "--metrics-port", str(ports.metrics),
            "--trainer-metrics-port", str(ports.trainer_metrics), "--http-port", "0",
            "--broker-port", str(ports.broker), "--adapter-store", str(out / "adapters"),
            "--state-dir", str(logs)]
    target = f"127.0.0.1:{ports.grpc}"
    with child_stack(argv, target, env, logs / "stack.log", ready_timeout_s, 90.0):
        yield target
