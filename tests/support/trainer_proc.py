"""Start the real trainer as a child process (python -m trainer.service)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def start_trainer(bootstrap: str, state_dir: Path, store: Path, group: str, log: Path,
                  **env_overrides: str) -> subprocess.Popen[bytes]:
    env = {**os.environ,
           "PERSONALIZE_TRAINER_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
           "PERSONALIZE_TRAINER_GROUP_ID": group,
           "PERSONALIZE_TRAINER_STATE_DIR": str(state_dir),
           "PERSONALIZE_TRAINER_ADAPTER_STORE": str(store),
           "PERSONALIZE_TRAINER_METRICS_PORT": "0",
           **{f"PERSONALIZE_TRAINER_{k.upper()}": v for k, v in env_overrides.items()}}
    return subprocess.Popen([sys.executable, "-m", "trainer.service"], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def journaled_ids(state_dir: Path, users: list[str]) -> list[str]:
    """Feedback ids in a trainer's training data (its journal), users in order."""
    from trainer.journal import Journal

    if not (state_dir / "journal.sqlite").exists():
        return []
    journal = Journal(state_dir / "journal.sqlite", "generations", "feedback")
    try:
        return [fid for u in users for fid in journal.feedback_ids(u)]
    finally:
        journal.close()
