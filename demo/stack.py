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
    """Trainer settings for a demo that must show learning within minutes on a CPU:
    a larger LoRA learning rate, short turns, and every turn judged by the gate."""

    ppo_lr: float = 3e-3
    ppo_lam: float = 1.0
    ppo_max_new_tokens: int = 32
    ppo_batch_size: int = 8
    ppo_ppo_epochs: int = 2
    ppo_kl_coef: float = 0.05
    schedule_min_pairs: int = 12
    schedule_min_new_feedback: int = 6
    schedule_max_wait_s: float = 60.0
    schedule_ppo_steps_per_turn: int = 4
    publish_eval_prompts: int = 4
    publish_eval_samples: int = 4
    publish_kl_bound: float = 30.0
    torch_threads: int = 2

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
