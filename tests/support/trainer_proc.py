"""Start the real trainer as a child process (python -m trainer.loop.service)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ALWAYS_PUBLISH = {
    "schedule_min_new_feedback": "4", "schedule_ppo_steps_per_turn": "2",
    "schedule_min_pairs": "2",
    "ppo_batch_size": "4", "ppo_mini_batch_size": "2", "ppo_max_new_tokens": "8",
    "ppo_lr": "0.001", "reward_user_min_examples": "4", "publish_eval_prompts": "2",
    "publish_eval_samples": "1", "publish_min_improvement": "-1000000",
    "publish_kl_bound": "1000000", "schedule_continue_without_feedback": "false"}
"""start_trainer settings for the tiny model: a user with 4 feedback events gets a
short turn whose candidate the gate always publishes (and no further turn until new
feedback: tests count versions)."""


def start_trainer(bootstrap: str, state_dir: Path, store: Path, group: str, log: Path,
                  **env_overrides: str) -> subprocess.Popen[bytes]:
    env = {**os.environ,
           "PERSONALIZE_TRAINER_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
           "PERSONALIZE_TRAINER_GROUP_ID": group,
           "PERSONALIZE_TRAINER_STATE_DIR": str(state_dir),
           "PERSONALIZE_TRAINER_ADAPTER_STORE": str(store),
           "PERSONALIZE_TRAINER_METRICS_PORT": "0",
           **{f"PERSONALIZE_TRAINER_{k.upper()}": v for k, v in env_overrides.items()}}
    return subprocess.Popen([sys.executable, "-m", "trainer.loop.service"], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def stop_all(procs: list[subprocess.Popen[bytes]], timeout_s: float = 60.0) -> None:
    """SIGTERM every process still running, then wait; SIGKILL what does not end."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def journaled_ids(state_dir: Path, users: list[str]) -> list[str]:
    """Feedback ids in a trainer's training data (its journal), users in order."""
    from trainer.ingest.journal import Journal

    if not (state_dir / "journal.sqlite").exists():
        return []
    journal = Journal(state_dir / "journal.sqlite", "generations", "feedback")
    try:
        return [fid for u in users for fid in journal.feedback_ids(u)]
    finally:
        journal.close()


class KillableTrainer:
    """A trainer process that is kill -9'd at random points while it consumes and
    restarted at once, as a crash and a supervisor's restart would do."""

    def __init__(self, start: Callable[[], subprocess.Popen[bytes]],
                 journaled: Callable[[], list[str]], seed: int) -> None:
        self._start, self._journaled = start, journaled
        self._rng = random.Random(seed)
        self.proc = start()
        self.kills = 0
        self.seen_at_kill: list[int] = []

    def kill_while_consuming(self, timeout_s: float = 60.0, max_delay_s: float = 0.3) -> None:
        """Once the journal grows (the trainer is visibly consuming), wait a random
        moment, SIGKILL it and start a new one."""
        before, deadline = len(self._journaled()), time.monotonic() + timeout_s
        while len(self._journaled()) <= before and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(self._rng.uniform(0.0, max_delay_s))
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.kills += 1
        self.seen_at_kill.append(len(self._journaled()))
        self.proc = self._start()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def wait_for_ids(journaled: Callable[[], list[str]], wanted: set[str],
                 timeout_s: float = 120.0) -> list[str]:
    """Poll the journal until it holds every id in ``wanted`` (or time runs out)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = journaled()
        if set(got) >= wanted or time.monotonic() > deadline:
            return got
        time.sleep(0.5)
