"""The `personalize` CLI as a user runs it, against the in-process server."""

from __future__ import annotations

import subprocess
import sys

from personalize.v1 import assistant_pb2 as pb
from services.client.cli import parse_ranking


def run_cli(server, stdin: str, *args: str) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run(
        [sys.executable, "-m", "services.client.cli", *args,
         "--server", f"127.0.0.1:{server.port}"],
        input=stdin, capture_output=True, text=True, timeout=120, check=False)


def test_parse_ranking() -> None:
    assert parse_ranking("2 1 3", 3) == [1, 0, 2]
    assert parse_ranking("3,1", 3) == [2, 0, 1]
    assert parse_ranking("1 1 2", 3) is None
    assert parse_ranking("x", 2) is None
    assert parse_ranking("4 1 2", 3) is None


def test_chat_thumbs(stub, server, user_id: str) -> None:  # type: ignore[no-untyped-def]
    done = run_cli(server, "hello there\nu\n\n", "chat", "--user", user_id, "--max-tokens", "8")
    assert done.returncode == 0, done.stderr
    assert "assistant> " in done.stdout and "feedback recorded" in done.stdout
    status = stub.GetUserStatus(pb.UserStatusRequest(user_id=user_id))
    assert status.feedback_accepted == 1 and status.generations_served == 1


def test_chat_ranking(stub, server, user_id: str) -> None:  # type: ignore[no-untyped-def]
    done = run_cli(server, "name a fruit\n0 9\n2 1 3\n\n", "chat", "--user", user_id,
                   "--candidates", "3", "--max-tokens", "8")
    assert done.returncode == 0, done.stderr
    assert "--- [3] ---" in done.stdout and "please list the numbers 1-3" in done.stdout
    assert "ranking recorded" in done.stdout
    status = stub.GetUserStatus(pb.UserStatusRequest(user_id=user_id))
    assert status.feedback_accepted == 1 and status.generations_served == 3


def test_status_command_and_errors(server, user_id: str) -> None:  # type: ignore[no-untyped-def]
    done = run_cli(server, "", "status", "--user", user_id)
    assert done.returncode == 0 and user_id in done.stdout
    bad = run_cli(server, "", "status", "--user", "../../etc")
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr
