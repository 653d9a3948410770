"""Issue 13's first "done when": a user whose served adapter is made worse on purpose is
rolled back automatically, through the real server, broker and trainer.

The user is served v1, then a v2 published straight through the store. The server
interleaves one comparison candidate into every two-candidate call (comparison_rate 1);
the simulated user always ranks the parent arm's (v1's) candidate first, so v2 loses to
its parent in every comparison. The trainer (never due for a training turn here)
reviews the new feedback, rolls v2 back, and the server serves v1's weights again as
v3; GetUserStatus says why."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import pytest

from personalize.v1 import assistant_pb2 as pb
from personalize.v1 import assistant_pb2_grpc
from services.contract.store import AdapterStore
from tests.conftest import make_server_config
from tests.services.helpers import generate, greedy, wait_for_version
from tests.support.adapters import make_adapter, publish
from tests.support.topics import isolated_kafka, read_topic, trainer_topic_env
from tests.support.trainer_proc import ALWAYS_PUBLISH, start_trainer

CALLS = 16
MIN_COMPARISONS = 5


@pytest.fixture()
def arm_server(loop_thread, tiny_engine, broker, engine_config, tmp_path: Path):  # type: ignore[no-untyped-def]
    from services.server.main import AssistantServer

    kafka = isolated_kafka(broker.bootstrap, f"rollback-{uuid.uuid4().hex[:6]}")
    cfg = make_server_config(tmp_path / "store", broker.bootstrap, engine_config, kafka=kafka,
                             comparison_rate=1.0, store_rescan_s=2.0)
    srv = loop_thread.call(AssistantServer, cfg, tiny_engine)
    loop_thread.run(srv.start())
    yield srv
    loop_thread.run(srv.stop())


def test_a_worse_adapter_is_rolled_back_to_its_parent(arm_server, broker, tiny_model_dir: Path,  # type: ignore[no-untyped-def]
                                                      tmp_path: Path) -> None:
    import grpc

    kafka = arm_server.cfg.kafka
    store: AdapterStore = arm_server.store
    user = f"rb-{uuid.uuid4().hex[:6]}"
    log = tmp_path / "trainer.log"
    trainer = start_trainer(
        broker.bootstrap, tmp_path / "state", Path(arm_server.cfg.adapter_store),
        f"rollback-{uuid.uuid4().hex[:6]}", log, policy_model=str(tiny_model_dir),
        policy_model_id=arm_server.engine.model_id,
        **{**ALWAYS_PUBLISH, **trainer_topic_env(kafka), "torch_threads": "1",
           # never due for a training turn: only the online review acts on the feedback
           "schedule_min_new_feedback": "1000", "schedule_max_wait_s": "100000",
           "online_rollback_min_comparisons": str(MIN_COMPARISONS)})
    with grpc.insecure_channel(f"127.0.0.1:{arm_server.port}") as ch:
        stub = assistant_pb2_grpc.AssistantStub(ch)
        try:
            for seed, version in ((1, "v1"), (2, "v2")):
                adapter = make_adapter(tiny_model_dir, tmp_path / f"a{seed}", seed=seed)
                publish(store, kafka.bootstrap_servers, kafka.adapter_updates_topic, user,
                        adapter, arm_server.engine.model_id)
                served = wait_for_version(stub, user, version)
                if version == "v1":
                    v1_text = served.texts[0]

            # 1. two candidates a call: one is the served v2's, one a comparison arm's
            calls = [generate(stub, user, f"question {i}", num_candidates=2, max_tokens=6,
                              temperature=1.0) for i in range(CALLS)]
            assert all(out.versions == {"v2"} for out in calls)
            wanted = {rid for out in calls for rid in out.response_ids.values()}
            records = read_topic(kafka.bootstrap_servers, kafka.generations_topic,
                                 lambda rs: wanted <= {r["value"]["response_id"] for r in rs})
            arm = {r["value"]["response_id"]: r["value"]["arm"] for r in records
                   if r["value"]["response_id"] in wanted}
            assert set(arm) == wanted

            # 2. the user prefers the parent: its candidate first; against base, v2 first
            parent_calls = 0
            for out in calls:
                rids = list(out.response_ids.values())
                if any(arm[r] == "parent" for r in rids):
                    parent_calls += 1
                rids.sort(key=lambda r: {"parent": 0, "served": 1, "base": 2}[arm[r]])
                stub.SubmitFeedback(pb.FeedbackRequest(user_id=user,
                                                       ranking=pb.Ranking(response_ids=rids)),
                                    timeout=30)
            assert parent_calls >= MIN_COMPARISONS, f"{parent_calls} parent arms in {CALLS}"

            # 3. the trainer rolls v2 back; every replica serves v1's weights as v3
            deadline = time.monotonic() + 180
            while True:
                status = stub.GetUserStatus(pb.UserStatusRequest(user_id=user), timeout=10)
                if status.last_rollback:
                    break
                assert trainer.poll() is None, log.read_text()[-4000:]
                assert time.monotonic() < deadline, log.read_text()[-4000:]
                time.sleep(0.5)
            assert status.last_rollback.startswith("rolled back v2 -> v3")
            assert "lost to its parent v1" in status.last_rollback
            wait_for_version(stub, user, "v3")
            assert greedy(stub, user).texts[0] == v1_text, "v1's weights are served again"
            m3 = store.manifest(user, "v3")
            assert m3.metrics["rolled_back_from"] == "v2" and m3.metrics["restores"] == "v1"
            assert m3.sha256 == store.manifest(user, "v1").sha256
            m2 = store.manifest(user, "v2")
            assert m2.metrics["online_vs_parent"]["losses"] >= MIN_COMPARISONS
            assert store.latest(user) == "v3"
        finally:
            trainer.send_signal(signal.SIGTERM)
            trainer.wait(timeout=60)
