"""The demo's own local stack: ``personalize-stack`` in a child process, on its own
ports and folders, with trainer settings sized for a short run on a small CPU host."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, fields
from pathlib import Path

from services.stack import wait_serving


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

    ppo_lr: float = 2e-3
    ppo_max_new_tokens: int = 48
    ppo_batch_size: int = 8
    ppo_ppo_epochs: int = 2
    ppo_kl_coef: float = 0.02
    schedule_min_new_feedback: int = 6
    schedule_max_wait_s: float = 60.0
    schedule_ppo_steps_per_turn: int = 2
    publish_eval_prompts: int = 4
    publish_eval_samples: int = 2
    publish_kl_bound: float = 6.0
    torch_threads: int = 2

    def env(self) -> dict[str, str]:
        return {f"PERSONALIZE_TRAINER_{f.name.upper()}": str(getattr(self, f.name))
                for f in fields(self)}


class DemoStack:
    """Starts on enter (waits for SERVING), stops everything on exit."""

    def __init__(self, model: str, out: Path, ports: StackPorts, profile: TrainerProfile,
                 ready_timeout_s: float = 600.0) -> None:
        self._model = model
        self._out = out
        self._ports = ports
        self._profile = profile
        self._ready_timeout = ready_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self.target = f"127.0.0.1:{ports.grpc}"

    def __enter__(self) -> DemoStack:
        p, logs = self._ports, self._out / "stack"
        logs.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self._profile.env(),
               "PERSONALIZE_TRAINER_STATE_DIR": str(self._out / "trainer-state")}
        cmd = [sys.executable, "-m", "services.stack", "--model", self._model,
               "--port", str(p.grpc), "--metrics-port", str(p.metrics),
               "--trainer-metrics-port", str(p.trainer_metrics), "--broker-port", str(p.broker),
               "--adapter-store", str(self._out / "adapters"), "--state-dir", str(logs)]
        with (logs / "stack.log").open("ab") as log:
            self._proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        try:
            wait_serving(self.target, [self._proc], self._ready_timeout)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGINT)
        try:
            self._proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
