"""SIGTERM unwinds ``with`` blocks inside ``sigterm_unwinds`` (as Ctrl-C does), so a
benchmark or the demo stopped by ``kill`` or ``timeout`` stops the stack it started; the
previous handler comes back after the block."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from services.devstack.stack import sigterm_unwinds

REPO = Path(__file__).resolve().parents[2]
SCRIPT = """
import subprocess, time
from services.devstack.stack import sigterm_unwinds
child = subprocess.Popen(["sleep", "300"])
try:
    with sigterm_unwinds():
        print(child.pid, flush=True)  # the test signals once this is read: handler set
        time.sleep(300)
finally:
    child.terminate()
    child.wait()
    print("stopped its child", flush=True)
"""


def test_sigterm_runs_the_cleanup_of_the_blocks_around() -> None:
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child = int(proc.stdout.readline())  # type: ignore[union-attr]
    try:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        _kill(child)  # it holds the pipes open: a failed run must not leave it behind
        raise
    finally:
        proc.kill()
    assert "stopped its child" in out, err
    assert "KeyboardInterrupt" in err
    try:
        os.kill(child, 0)
    except ProcessLookupError:
        return
    _kill(child)
    raise AssertionError(f"the child {child} outlived a SIGTERM to its parent")


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def test_the_previous_handler_comes_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with sigterm_unwinds():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
