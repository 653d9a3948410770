"""Issue 13's erasure "done when", through the real server, broker and trainer: a user
is erased while other users keep chatting and rating; then the trainer is restarted with
its journal deleted, so it rebuilds its state from the topics. Nothing of the erased user
comes back (no adapter, status, journal row or reward head), the other users' adapters
are untouched and every one of their acknowledged feedback events is in the rebuilt
journal; what the erased user rated after the erasure is kept."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest

from personalize.v1 import assistant_pb2 as pb
from personalize.v1 import assistant_pb2_grpc
from services.contract.store import AdapterStore
from tests.conftest import make_server_config
from tests.services.helpers import generate, wait_for_version
from tests.support.topics import isolated_kafka, trainer_topic_env
from tests.support.trainer_proc import ALWAYS_PUBLISH, journaled_ids, start_trainer


@pytest.fixture()
def server(loop_thread, tiny_engine, broker, engine_config, tmp_path: Path):  # type: ignore[no-untyped-def]
    from services.server.main import AssistantServer

    kafka = isolated_kafka(broker.bootstrap, f"erase-{uuid.uuid4().hex[:6]}")
    cfg = make_server_config(tmp_path / "store", broker.bootstrap, engine_config, kafka=kafka,
                             store_rescan_s=2.0)
    srv = loop_thread.call(AssistantServer, cfg, tiny_engine)
    loop_thread.run(srv.start())
    yield srv
    loop_thread.run(srv.stop())


def rate(stub: assistant_pb2_grpc.AssistantStub, user: str, i: int) -> str:
    """One two-candidate call ranked by the user; the acknowledged feedback id."""
    out = generate(stub, user, f"{user} question {i}", num_candidates=2, max_tokens=6,
                   temperature=1.0)
    fid = f"{user}-{i}-{uuid.uuid4().hex[:6]}"
    stub.SubmitFeedback(pb.FeedbackRequest(
        user_id=user, feedback_id=fid,
        ranking=pb.Ranking(response_ids=[out.response_ids[1], out.response_ids[0]])),
        timeout=30)
    return fid


class Load(threading.Thread):
    """Other users chat and rate without pause; keeps the acknowledged feedback ids."""

    def __init__(self, stub: assistant_pb2_grpc.AssistantStub, users: list[str]) -> None:
        super().__init__(daemon=True)
        self._stub, self._users = stub, users
        self.acked: dict[str, list[str]] = {u: [] for u in users}
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        i = 100
        try:
            while not self.stop.is_set():
                for user in self._users:
                    self.acked[user].append(rate(self._stub, user, i))
                i += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def rows_of(state: Path, user: str) -> tuple[int, int, list[float]]:
    """(feedback rows, generation rows, generation times) of ``user`` in a journal."""
    db = sqlite3.connect(str(state / "journal.sqlite"))
    try:
        feedback = db.execute("SELECT COUNT(*) FROM feedback WHERE user_id = ?",
                              (user,)).fetchone()[0]
        bodies = [b for (b,) in db.execute("SELECT body FROM generations WHERE user_id = ?",
                                           (user,))]
    finally:
        db.close()
    return feedback, len(bodies), [json.loads(b)["created_at"] for b in bodies]


def wait(check, what: str, proc, log: Path, timeout_s: float = 240.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not check():
        assert proc.poll() is None, log.read_text()[-4000:]
        assert time.monotonic() < deadline, f"{what}\n{log.read_text()[-4000:]}"
        time.sleep(0.5)


def test_an_erased_user_does_not_come_back_from_a_rebuild(server, broker, tiny_model_dir: Path,  # type: ignore[no-untyped-def]
                                                          tmp_path: Path) -> None:
    kafka, store = server.cfg.kafka, AdapterStore(server.cfg.adapter_store)
    tag = uuid.uuid4().hex[:6]
    erased, others = f"gone-{tag}", [f"stay-{tag}", f"also-{tag}"]
    state, log = tmp_path / "state", tmp_path / "trainer.log"

    def trainer():  # type: ignore[no-untyped-def]
        return start_trainer(
            broker.bootstrap, state, Path(server.cfg.adapter_store), f"erase-{tag}", log,
            policy_model=str(tiny_model_dir), policy_model_id=server.engine.model_id,
            reward_max_resident_users="1",  # reward heads go to disk between users
            **{**ALWAYS_PUBLISH, **trainer_topic_env(kafka), "torch_threads": "1"})

    proc = trainer()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = assistant_pb2_grpc.AssistantStub(ch)
        try:
            # 1. the user to erase and one other user are trained and served a v1
            acked = {u: [rate(stub, u, i) for i in range(4)] for u in [erased, *others]}
            for user in (erased, others[0]):
                wait(lambda u=user: store.latest(u) == "v1", f"{user} gets v1", proc, log)
                wait_for_version(stub, user, "v1")
            before_erase = {u: [store.manifest(u, v) for v in store.versions(u)]
                            for u in others}

            # 2. erased while the others keep chatting and rating
            load = Load(stub, others)
            load.start()
            time.sleep(2.0)
            out = stub.Erase(pb.LifecycleRequest(user_id=erased), timeout=30)
            assert list(out.deleted_versions) == ["v1"], out
            after = rate(stub, erased, 50)  # what the user does afterwards is theirs again
            wait(lambda: rows_of(state, erased)[0] == 1 and "erased (store" in log.read_text(),
                 "the trainer carries the erasure out", proc, log)
            time.sleep(2.0)
            load.stop.set()
            load.join(timeout=120)
            assert load.error is None, repr(load.error)
            for user in others:
                acked[user] += load.acked[user]
                assert len(load.acked[user]) >= 2, "the load ran across the erasure"
            acked[erased] = [after]
            assert not (state / "reward-heads" / f"{erased}.safetensors").exists()

            # 3. a rebuild from the topics: the trainer restarts without its journal
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            at_restart = {u: len(store.versions(u)) for u in others}
            for name in ("journal.sqlite", "journal.sqlite-wal", "journal.sqlite-shm"):
                (state / name).unlink(missing_ok=True)
            proc = trainer()
            wait(lambda: set(journaled_ids(state, [*others, erased]))
                 >= {f for ids in acked.values() for f in ids},
                 "the rebuilt journal holds every acknowledged event", proc, log)
            # ... and nothing of the erased user from before the erasure
            feedback, generations, times = rows_of(state, erased)
            assert (feedback, journaled_ids(state, [erased])) == (1, [after])
            assert generations == 2 and min(times) > out.erased_at, times
            for user in others:  # exactly once each
                ids = journaled_ids(state, [user])
                assert len(ids) == len(set(ids)) and set(acked[user]) <= set(ids)
            # the others keep training (new versions), the erased user gets nothing back
            wait(lambda: any(len(store.versions(u)) > at_restart[u] for u in others),
                 "the rebuilt trainer trains the others", proc, log, timeout_s=180)
            assert store.versions(erased) == [] and store.read_status(erased) is None
            assert sorted(p.name for p in store.user_dir(erased).iterdir()) == ["control.json"]
            for user in others:  # untouched: every version they had is still there as it was
                kept = {m.version: m.sha256 for m in before_erase[user]}
                assert {v: store.manifest(user, v).sha256 for v in kept} == kept
            status = stub.GetUserStatus(pb.UserStatusRequest(user_id=erased), timeout=10)
            assert (status.adapter_version, status.last_publish_decision) == ("", "")
            assert not (state / "reward-heads" / f"{erased}.safetensors").exists()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
