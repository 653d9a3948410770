"""A non-Python gRPC client (grpc-js) calls health and Generate, and a non-Python
Kafka client (kafkajs) reads the feedback topic."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from personalize.v1 import assistant_pb2 as pb
from tests.conftest import REPO
from tests.services.helpers import generate

CLIENTS = REPO / ".cache" / "node-clients"
SCRIPT = REPO / "tests" / "clients" / "node_client.mjs"


def node(*args: str) -> str:
    assert shutil.which("node"), "node is required (make test installs the clients)"
    assert (CLIENTS / "node_modules").is_dir(), "run `make test` to install the node clients"
    script = CLIENTS / SCRIPT.name
    script.write_bytes(SCRIPT.read_bytes())
    done = subprocess.run(["node", str(script), *args], capture_output=True, text=True,
                          timeout=90, check=False, cwd=CLIENTS)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_node_grpc_client_health_and_generate(server, user_id: str) -> None:  # type: ignore[no-untyped-def]
    out = json.loads(node("grpc", f"127.0.0.1:{server.port}", str(Path(REPO / "proto")), user_id))
    assert out["health"] == "SERVING"
    assert out["completion_tokens"] == 6 and out["response_id"].startswith("r1.")


def test_kafkajs_reads_feedback(stub, broker, user_id: str) -> None:  # type: ignore[no-untyped-def]
    got = generate(stub, user_id, max_tokens=4)
    ack = stub.SubmitFeedback(pb.FeedbackRequest(
        user_id=user_id, feedback_id="node-visible",
        thumbs=pb.Thumbs(response_id=got.response_ids[0], up=True)))
    records = json.loads(node("kafka", broker.bootstrap, "feedback", user_id))
    assert [r["feedback_id"] for r in records] == [ack.feedback_id]
    assert records[0]["response_ids"] == [got.response_ids[0]] and records[0]["up"] is True
