"""The one-command embedded stack: broker + topics + server as child processes;
it serves, and SIGINT (Ctrl-C) stops every child cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from services.client.sdk import AssistantClient
from services.devstack.broker import free_port


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(x) for x in out.stdout.split()]


def test_stack_serves_and_stops_on_ctrl_c(tiny_model_dir: Path, tmp_path: Path) -> None:
    port, mport, bport, hport = free_port(), free_port(), free_port(), free_port()
    env = {**os.environ, "PERSONALIZE_SERVER_ENGINE_MODEL_ID": "tiny",
           "PERSONALIZE_SERVER_ENGINE_DTYPE": "float32",
           "PERSONALIZE_SERVER_ENGINE_MAX_MODEL_LEN": "512"}
    log = (tmp_path / "stack.out").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.devstack.stack", "--model", str(tiny_model_dir),
         "--port", str(port), "--metrics-port", str(mport), "--broker-port", str(bport),
         "--http-port", str(hport),
         "--adapter-store", str(tmp_path / "store"), "--state-dir", str(tmp_path / "state"),
         "--no-trainer"], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 240
        while "personalize is up" not in (tmp_path / "stack.out").read_text():
            assert proc.poll() is None, (tmp_path / "stack.out").read_text()[-3000:]
            assert time.monotonic() < deadline, "stack did not come up"
            time.sleep(0.5)
        printed = (tmp_path / "stack.out").read_text()
        assert f"127.0.0.1:{port}" in printed and f":{bport}" in printed
        assert "auth      OFF" in printed, "the open default says so"
        with AssistantClient(f"127.0.0.1:{port}") as client:
            [cand] = client.complete("stack-user", "hi", max_tokens=5)
            assert cand.completion_tokens == 5
            assert client.thumbs("stack-user", cand.response_id, True).feedback_id
        # the same server process answers the OpenAI-compatible HTTP API
        with urllib.request.urlopen(f"http://127.0.0.1:{hport}/ready", timeout=10) as ready:
            assert ready.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{hport}/v1/models", timeout=10) as m:
            assert json.load(m)["data"][0]["id"] == "tiny"
        children = _children(proc.pid)
        assert len(children) >= 2, "broker and server run as children"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0
        for child in children:
            assert not Path(f"/proc/{child}").exists() or \
                "zombie" in Path(f"/proc/{child}/status").read_text(), f"child {child} left"
    finally:
        if proc.poll() is None:  # a failed run still stops the stack's children
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_a_server_that_cannot_start_stops_the_stack_and_shows_why(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    out = subprocess.run(
        [sys.executable, "-m", "services.devstack.stack", "--model", str(missing),
         "--port", str(free_port()), "--metrics-port", str(free_port()),
         "--broker-port", str(free_port()), "--http-port", str(free_port()),
         "--adapter-store", str(tmp_path / "store"), "--state-dir", str(tmp_path / "state"),
         "--no-trainer"], capture_output=True, text=True, timeout=240, check=False)
    printed = out.stdout + out.stderr
    assert out.returncode == 1, printed[-3000:]
    assert "services.server.main exited with code 1 during start-up" in printed
    assert str(tmp_path / "state" / "server.log") in printed
    assert str(missing) in printed, "the end of the server's log, with the cause, is shown"
