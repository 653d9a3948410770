"""The boundaries between the parts of the loop (import-linter contracts in
pyproject.toml) and the layout a newcomer reads the loop from."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_import_contracts_hold() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is not installed (the dev extra)"
    done = subprocess.run([exe, "--no-cache"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_the_tree_shows_the_loop() -> None:
    stages = ["services/server/generation.py", "services/server/feedback.py",
              "trainer/ingest", "trainer/data", "trainer/reward", "trainer/ppo",
              "trainer/loop/gate.py", "trainer/loop/publish.py", "services/server/hot_swap.py"]
    missing = [s for s in stages if not (REPO / s).exists()]
    assert not missing, missing
