"""Diversified candidates on the real engine: a server with a temperature spread samples
the candidates of a multi-candidate call at spread temperatures and records each one's
actual temperature on Kafka; single-candidate and greedy calls are untouched, and seeded
calls stay reproducible."""

from __future__ import annotations

import json
import uuid
from collections import defaultdict

import pytest

from services.contract.records import GenerationRecord
from tests.conftest import make_server_config
from tests.services.helpers import generate
from tests.support.topics import isolated_kafka, read_topic

SPREAD = 0.8


@pytest.fixture(scope="module")
def spread_server(loop_thread, tiny_engine, broker, engine_config,  # type: ignore[no-untyped-def]
                  tmp_path_factory: pytest.TempPathFactory):
    from services.server.main import AssistantServer

    kafka = isolated_kafka(broker.bootstrap, f"spread-{uuid.uuid4().hex[:6]}")
    cfg = make_server_config(tmp_path_factory.mktemp("spread-store"), broker.bootstrap,
                             engine_config, kafka=kafka, comparison_rate=0.0,
                             candidate_temperature_spread=SPREAD)
    srv = loop_thread.call(AssistantServer, cfg, tiny_engine)
    loop_thread.run(srv.start())
    yield srv
    loop_thread.run(srv.stop())


@pytest.fixture(scope="module")
def spread_stub(spread_server):  # type: ignore[no-untyped-def]
    import grpc

    from personalize.v1 import assistant_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{spread_server.port}") as ch:
        yield assistant_pb2_grpc.AssistantStub(ch)


def test_records_carry_each_candidates_spread_temperature(spread_server, spread_stub,  # type: ignore[no-untyped-def]
                                                          user_id: str) -> None:
    ranked = generate(spread_stub, user_id, "four", num_candidates=4, max_tokens=6,
                      temperature=0.7)
    one = generate(spread_stub, user_id, "one", max_tokens=6, temperature=0.7)
    greedy = generate(spread_stub, user_id, "greedy", num_candidates=3, max_tokens=6,
                      temperature=0.0)
    seeded = [generate(spread_stub, user_id, "seeded", num_candidates=2, max_tokens=8,
                       temperature=1.0, seed=11) for _ in range(2)]
    assert len(ranked.finished) == 4 and len(one.finished) == 1 and len(greedy.finished) == 3
    assert seeded[0].texts == seeded[1].texts, "a seeded call is reproducible"

    kafka = spread_server.cfg.kafka
    records = read_topic(kafka.bootstrap_servers, kafka.generations_topic,
                         lambda rs: sum(r["key"] == user_id for r in rs) >= 4 + 1 + 3 + 4)
    groups: dict[str, list[GenerationRecord]] = defaultdict(list)
    for r in records:
        if r["key"] == user_id:
            g = GenerationRecord.from_json(json.dumps(r["value"]).encode())
            groups[g.messages[-1]["content"]].append(g)

    def temps(prompt: str) -> list[float]:
        """(actual, requested) temperatures of the prompt's candidates, flattened; the
        request's float32 temperature read back as it was sent."""
        pairs = sorted((g.sampling["temperature"], g.sampling["requested_temperature"])
                       for g in groups[prompt])
        return [x for pair in pairs for x in pair]

    by_index = {g.candidate_index: g.sampling["temperature"] for g in groups["four"]}
    assert [by_index[i] for i in range(4)] == pytest.approx([0.3, 0.3 + 0.8 / 3,
                                                            0.3 + 1.6 / 3, 1.1])
    assert temps("four")[1::2] == pytest.approx([0.7] * 4)
    assert temps("one") == pytest.approx([0.7, 0.7]), "one candidate: the requested temperature"
    assert temps("greedy") == [0.0] * 6, "greedy calls are untouched"
    assert temps("seeded") == pytest.approx([0.6, 1.0] * 2 + [1.4, 1.0] * 2)
    text = {g.response_id: g.completion for gs in groups.values() for g in gs}
    for i, rid in ranked.response_ids.items():
        assert ranked.texts[i] == text[rid], "recorded text is what the client got"
