"""The broker stops answering (SIGSTOP) and comes back (SIGCONT): feedback fails
fast with UNAVAILABLE, Generate keeps serving, both recover by themselves."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid

import grpc
import pytest

from personalize.v1 import assistant_pb2 as pb
from personalize.v1 import assistant_pb2_grpc
from services.devstack.broker import LocalBroker
from tests.services.helpers import generate
from tests.support.topics import isolated_kafka, read_topic, trainer_topic_env
from tests.support.trainer_proc import journaled_ids, start_trainer, wait_for_ids


@pytest.fixture(scope="module")
def kafka(own_broker: LocalBroker):  # type: ignore[no-untyped-def]
    return isolated_kafka(own_broker.bootstrap, "pause")


@pytest.fixture(scope="module")
def trainer(own_broker: LocalBroker, kafka, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """An ingesting trainer on the module's broker: (process, state dir, log)."""
    tmp = tmp_path_factory.mktemp("pause-trainer")
    proc = start_trainer(own_broker.bootstrap, tmp / "state", tmp / "store",
                         f"pause-{uuid.uuid4().hex[:6]}", tmp / "trainer.log", train="false",
                         join_timeout_s="5", **trainer_topic_env(kafka))
    yield proc, tmp / "state", tmp / "trainer.log"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


def thumbs(user: str, response_id: str, feedback_id: str) -> pb.FeedbackRequest:
    return pb.FeedbackRequest(user_id=user, feedback_id=feedback_id,
                              thumbs=pb.Thumbs(response_id=response_id, up=True))


def test_pause_and_recovery(servers, own_broker: LocalBroker, kafka, trainer,  # type: ignore[no-untyped-def]
                            user_id: str) -> None:
    srv = servers.start(kafka)
    bound = kafka.produce_timeout_s + kafka.max_block_s + 2.0
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = assistant_pb2_grpc.AssistantStub(ch)
        rid = generate(stub, user_id, max_tokens=4).response_ids[0]
        acked = [stub.SubmitFeedback(thumbs(user_id, rid, "before"), timeout=30).feedback_id]
        os.kill(own_broker.pid, signal.SIGSTOP)
        timings: dict[str, list[float]] = {"feedback": [], "generate": []}
        try:
            for i in range(3):
                start = time.monotonic()
                with pytest.raises(grpc.RpcError) as err:
                    stub.SubmitFeedback(thumbs(user_id, rid, f"paused-{i}"), timeout=60)
                timings["feedback"].append(time.monotonic() - start)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
                start = time.monotonic()
                out = generate(stub, user_id, max_tokens=4, temperature=0.0)
                timings["generate"].append(time.monotonic() - start)
                assert out.finished[0].completion_tokens == 4
        finally:
            os.kill(own_broker.pid, signal.SIGCONT)
        print(f"while paused: {timings}")
        assert max(timings["feedback"]) < bound, timings
        assert max(timings["generate"]) < bound, timings
        # recovery by itself: the client retries the same feedback id until acked
        deadline, recovered = time.monotonic() + 60, None
        while recovered is None:
            assert time.monotonic() < deadline, "feedback did not recover after SIGCONT"
            try:
                recovered = stub.SubmitFeedback(thumbs(user_id, rid, "paused-0"), timeout=30)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
                time.sleep(0.5)
        acked.append(recovered.feedback_id)
        fresh = generate(stub, user_id, max_tokens=4).response_ids[0]
        acked.append(stub.SubmitFeedback(thumbs(user_id, fresh, "after"), timeout=30).feedback_id)
    records = read_topic(own_broker.bootstrap, kafka.feedback_topic,
                         lambda rs: {r["value"]["feedback_id"] for r in rs} >= set(acked))
    assert {r["value"]["feedback_id"] for r in records} >= set(acked)
    gens = read_topic(own_broker.bootstrap, kafka.generations_topic,
                      lambda rs: fresh in {r["value"]["response_id"] for r in rs})
    assert fresh in {r["value"]["response_id"] for r in gens}, "generations recorded again"
    servers.stop(srv)
    # the trainer rode the pause out and journaled every acknowledged event once
    proc, state, log = trainer
    got = wait_for_ids(lambda: journaled_ids(state, [user_id]), set(acked), timeout_s=60)
    assert proc.poll() is None, log.read_text()[-3000:]
    assert set(got) >= set(acked) and len(got) == len(set(got)), (got, acked)


def test_poison_records_are_dead_lettered(servers, own_broker: LocalBroker, kafka, trainer,  # type: ignore[no-untyped-def]
                                          user_id: str) -> None:
    from kafka import KafkaProducer

    from services.contract.records import FeedbackRecord

    srv = servers.start(kafka)
    producer = KafkaProducer(bootstrap_servers=own_broker.bootstrap, acks="all")

    def raw(topic: str, value: bytes, key: bytes = b"x") -> tuple[str, int, int]:
        meta = producer.send(topic, key=key, value=value).get(timeout=10)
        return topic, meta.partition, meta.offset

    def forged(**fields: object) -> bytes:
        body = {"feedback_id": "p", "user_id": user_id, "labeler_id": user_id,
                "kind": "thumbs", "response_ids": ["r"], "group_id": "g", "created_at": 1.0,
                "up": True, **fields}
        return FeedbackRecord(**body).to_json()  # type: ignore[arg-type]

    acked: list[str] = []
    poison: set[tuple[str, int, int]] = set()
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = assistant_pb2_grpc.AssistantStub(ch)
        rid = generate(stub, user_id, max_tokens=3).response_ids[0]
        for i, value in enumerate([
            b"\xff\xfe not json", b"[1, 2]", b'{"schema_version": 1, "type": "feedback"}',
            json.dumps({"schema_version": 99, "type": "feedback"}).encode(),
            forged(user_id="../../etc"), forged(labeler_id="a/b"), forged(up="yes"),
            forged(kind="ranking", response_ids=["a", "a"], up=None),
        ]):
            poison.add(raw(kafka.feedback_topic, value))
            poison.add(raw(kafka.generations_topic, b"{not json either"))
            ack = stub.SubmitFeedback(thumbs(user_id, rid, f"good-{i}"), timeout=30)
            acked.append(ack.feedback_id)
    producer.close()
    servers.stop(srv)
    proc, state, log = trainer
    got = wait_for_ids(lambda: journaled_ids(state, [user_id]), set(acked), timeout_s=60)
    assert set(got) == set(acked) and len(got) == len(acked), (got, acked)
    assert proc.poll() is None, log.read_text()[-3000:]
    wanted = {(t, p, o) for t, p, o in poison}

    def dead(records: list[dict]) -> set[tuple[str, int, int]]:  # type: ignore[type-arg]
        return {(r["value"]["source_topic"], r["value"]["partition"], r["value"]["offset"])
                for r in records}
    letters = [*read_topic(own_broker.bootstrap, kafka.feedback_topic + kafka.dlq_suffix,
                           lambda rs: dead(rs) >= {w for w in wanted if "feedback" in w[0]}),
               *read_topic(own_broker.bootstrap, kafka.generations_topic + kafka.dlq_suffix,
                           lambda rs: dead(rs) >= {w for w in wanted if "generations" in w[0]})]
    assert dead(letters) >= wanted, f"not dead-lettered: {wanted - dead(letters)}"
    assert all(r["value"]["reason"] for r in letters)
