"""Chaos: 1,000 feedback events from concurrent clients while the trainer is
kill -9'd at random points and restarted, and the server is restarted mid-way.
At the end every acknowledged event is in the training data exactly once, and
nothing is there that was not submitted."""

from __future__ import annotations

import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from personalize.v1 import assistant_pb2 as pb
from personalize.v1 import assistant_pb2_grpc
from tests.services.helpers import generate
from tests.support.topics import isolated_kafka, trainer_topic_env
from tests.support.trainer_proc import (
    KillableTrainer,
    journaled_ids,
    start_trainer,
    wait_for_ids,
)

EVENTS = 1000
SPACING_S = 0.04  # the burst lasts ~40 s: long enough for several kills
USERS = 6
DOWN_S = 1.5  # the server is away this long
RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
           grpc.StatusCode.DEADLINE_EXCEEDED)


class Clients:
    """Concurrent clients sending paced feedback; each retries its event with the
    same feedback id until acknowledged, except every tenth, which gives up after
    one failure (its outcome stays unknown to it)."""

    def __init__(self, stub, users: list[str], pool: dict[str, list[list[str]]]) -> None:  # type: ignore[no-untyped-def]
        self.stub, self.users, self.pool = stub, users, pool
        self.acked: list[str] = []
        self.failed: list[str] = []
        self.retries = 0
        self._lock = threading.Lock()
        self._start = time.monotonic()

    def request(self, i: int) -> pb.FeedbackRequest:
        user = self.users[i % len(self.users)]
        rng = random.Random(i)
        group = rng.choice(self.pool[user])
        fid = f"ev-{i}"
        if i % 2:
            return pb.FeedbackRequest(user_id=user, feedback_id=fid,
                                      thumbs=pb.Thumbs(response_id=rng.choice(group), up=True))
        return pb.FeedbackRequest(user_id=user, feedback_id=fid,
                                  ranking=pb.Ranking(response_ids=rng.sample(group, 3)))

    def send(self, i: int) -> None:
        time.sleep(max(0.0, self._start + i * SPACING_S - time.monotonic()))
        request = self.request(i)
        deadline = time.monotonic() + 90
        while True:
            try:
                self.stub.SubmitFeedback(request, timeout=10)
                break
            except grpc.RpcError as exc:
                if exc.code() not in RETRIED:
                    raise
                if i % 10 == 0 or time.monotonic() > deadline:
                    with self._lock:
                        self.failed.append(request.feedback_id)
                    return
                with self._lock:
                    self.retries += 1
                time.sleep(0.2)
        with self._lock:
            self.acked.append(request.feedback_id)
        if i % 25 == 1:  # a client that resends an acknowledged event
            self.stub.SubmitFeedback(request, timeout=10)


def responses(stub, user: str, groups: int) -> list[list[str]]:  # type: ignore[no-untyped-def]
    """Response ids of ``groups`` Generate calls of three candidates (retried while
    the server is coming back)."""
    out: list[list[str]] = []
    deadline = time.monotonic() + 30
    while len(out) < groups:
        try:
            out.append(list(generate(stub, user, f"question {len(out)}", num_candidates=3,
                                     max_tokens=2).response_ids.values()))
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    return out


def test_chaos_exactly_once(servers, broker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    kafka = isolated_kafka(broker.bootstrap, f"chaos-{uuid.uuid4().hex[:6]}")
    store = tmp_path / "store"
    srv = servers.start(kafka, store=store, drain_timeout_s=0.5)
    port = srv.port
    users = [f"chaos{i}-{uuid.uuid4().hex[:6]}" for i in range(USERS)]
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = assistant_pb2_grpc.AssistantStub(channel)
    pool = {u: responses(stub, u, 2) for u in users}
    clients = Clients(stub, users, pool)

    state = tmp_path / "state"
    start = lambda: start_trainer(  # noqa: E731
        broker.bootstrap, state, tmp_path / "trainer-store", f"chaos-{uuid.uuid4().hex[:6]}",
        tmp_path / "trainer.log", train="false", **trainer_topic_env(kafka))

    def journaled() -> list[str]:
        return journaled_ids(state, users)

    restarted: dict[str, float] = {}

    def restart_server() -> None:
        """Half-way: stop the server abruptly, start a new one on the same port
        and store; ids it issued before must still verify. New answers join in."""
        nonlocal srv
        while len(clients.acked) < EVENTS // 2:
            time.sleep(0.05)
        restarted["at_event"] = len(clients.acked)
        t0 = time.monotonic()
        servers.stop(srv)
        time.sleep(DOWN_S)  # clients meanwhile get UNAVAILABLE and retry
        srv = servers.start(kafka, store=store, drain_timeout_s=0.5, port=port)
        restarted["down_s"] = time.monotonic() - t0
        for u in users[:2]:
            pool[u].extend(responses(stub, u, 1))
        restarted["new_answers"] = 2

    began = time.monotonic()
    trainer = KillableTrainer(start, journaled, seed=2024)
    restarter = threading.Thread(target=restart_server)
    with ThreadPoolExecutor(max_workers=8) as pool_exec:
        futures = [pool_exec.submit(clients.send, i) for i in range(EVENTS)]
        restarter.start()
        while not all(f.done() for f in futures):
            trainer.kill_while_consuming(timeout_s=30, max_delay_s=1.0)
        for f in futures:
            f.result()  # any unexpected status code fails the test here
    restarter.join()
    burst_s = time.monotonic() - began
    try:
        trainer.kill_while_consuming(timeout_s=30)  # once more while catching up
        got = wait_for_ids(journaled, set(clients.acked), timeout_s=120)
    finally:
        trainer.stop()
        channel.close()
    submitted = {f"ev-{i}" for i in range(EVENTS)}
    acked, failed = set(clients.acked), set(clients.failed)
    print(f"chaos: {len(acked)} acked, {len(failed)} given up ({len(set(got) & failed)} of "
          f"them landed), {clients.retries} retries, {trainer.kills} trainer kills at "
          f"{trainer.seen_at_kill} journaled, server restart {restarted}, burst {burst_s:.0f}s")
    assert len(acked) + len(failed) == EVENTS and len(acked) == len(clients.acked)
    assert trainer.kills >= 3 and restarted["down_s"] >= DOWN_S and "new_answers" in restarted
    assert clients.retries > 0, "the restart must be felt by clients"
    assert 0 < trainer.seen_at_kill[0] < EVENTS, "kills must land mid-stream"
    assert len(got) == len(set(got)), "an event is in the training data twice"
    assert acked <= set(got), f"lost {len(acked - set(got))} acknowledged events"
    assert set(got) <= submitted, "the training data holds events nobody submitted"
    assert set(got) - acked <= failed, "only an event whose ack was lost may be unacked"
