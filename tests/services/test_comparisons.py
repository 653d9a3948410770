"""Interleaved comparisons on the real engine: a server with comparison_rate 1 answers
one candidate of every unseeded multi-candidate call from an arm (base or the parent
version), records the arm on Kafka, and shows the client nothing of it."""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

from personalize.v1 import assistant_pb2 as pb
from personalize.v1 import assistant_pb2_grpc
from services.contract.records import GenerationRecord
from tests.conftest import make_server_config
from tests.services.helpers import generate, wait_for_version
from tests.support.adapters import make_adapter, publish
from tests.support.topics import isolated_kafka, read_topic


@pytest.fixture(scope="module")
def arm_server(loop_thread, tiny_engine, broker, engine_config,  # type: ignore[no-untyped-def]
               tmp_path_factory: pytest.TempPathFactory):
    from services.server.main import AssistantServer

    kafka = isolated_kafka(broker.bootstrap, f"arms-{uuid.uuid4().hex[:6]}")
    cfg = make_server_config(tmp_path_factory.mktemp("arm-store"), broker.bootstrap,
                             engine_config, kafka=kafka, comparison_rate=1.0,
                             comparison_seed=1)
    srv = loop_thread.call(AssistantServer, cfg, tiny_engine)
    loop_thread.run(srv.start())
    yield srv
    loop_thread.run(srv.stop())


@pytest.fixture(scope="module")
def arm_stub(arm_server):  # type: ignore[no-untyped-def]
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{arm_server.port}") as ch:
        yield assistant_pb2_grpc.AssistantStub(ch)


def test_ranking_records_an_arm_on_kafka(arm_server, arm_stub, tiny_model_dir: Path,  # type: ignore[no-untyped-def]
                                         tmp_path: Path, user_id: str) -> None:
    kafka = arm_server.cfg.kafka
    for seed in (1, 2):
        adapter = make_adapter(tiny_model_dir, tmp_path / f"a{seed}", seed=seed)
        publish(arm_server.store, kafka.bootstrap_servers, kafka.adapter_updates_topic,
                user_id, adapter, "tiny-llama")
    wait_for_version(arm_stub, user_id, "v2")

    # the arms are a fair coin per call (tests/unit/test_arms.py checks the draw); the
    # server's seeded coin makes "both arms in 8 calls" certain, not true 127 times in 128
    calls = [generate(arm_stub, user_id, f"question {i}", num_candidates=3, max_tokens=6,
                      temperature=1.0) for i in range(8)]
    one = generate(arm_stub, user_id, "single", max_tokens=4)
    seeded = generate(arm_stub, user_id, "seeded", num_candidates=2, max_tokens=4, seed=5)
    for out in calls:
        assert out.versions == {"v2"}, "the client sees the served version only"
        assert all(rid.startswith("r1.") for rid in out.response_ids.values())
    ranked = list(calls[0].response_ids.values())
    ack = arm_stub.SubmitFeedback(pb.FeedbackRequest(
        user_id=user_id, ranking=pb.Ranking(response_ids=ranked)), timeout=30)
    assert ack.feedback_id

    mine = {f"question {i}" for i in range(8)} | {"single", "seeded"}
    records = read_topic(kafka.bootstrap_servers, kafka.generations_topic,
                         lambda rs: sum(r["value"]["messages"][-1]["content"] in mine
                                        for r in rs) >= 8 * 3 + 1 + 2)
    gens = [g for g in (GenerationRecord.from_json(json.dumps(r["value"]).encode())
                        for r in records if r["key"] == user_id)
            if g.messages[-1]["content"] in mine]  # not wait_for_version's probes
    by_group: dict[str, list[GenerationRecord]] = defaultdict(list)
    for g in gens:
        by_group[g.group_id].append(g)
    ranked_group = {g.group_id for g in gens if g.response_id == ranked[0]}.pop()
    assert any(g.arm != "served" for g in by_group[ranked_group])
    arms = []
    for group in by_group.values():
        assert all(g.adapter_version == "v2" for g in group)
        if len(group) == 3:
            (arm,) = [g for g in group if g.arm != "served"]
            assert (arm.arm, arm.arm_version) in {("base", ""), ("parent", "v1")}
            arms.append(arm.arm)
        else:  # one candidate, or a seeded call: never interleaved
            assert all(g.arm == "served" and g.arm_version == "" for g in group)
    assert len(arms) == 8
    assert set(arms) == {"base", "parent"}, f"8 draws of the seeded coin gave {arms}"
    text = {g.response_id: g.completion for g in gens}
    for out in calls:
        for i, rid in out.response_ids.items():
            assert out.texts[i] == text[rid], "recorded text is what the client got"
    assert one.versions == seeded.versions == {"v2"}
