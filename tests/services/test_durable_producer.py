"""DurableProducer against a real broker: an ack names the record the broker stored,
concurrent writes are all acknowledged and all there, records go to kafka-python on
the event loop once the topic is known, and a broker that does not answer surfaces as
Unavailable (never as an ack)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import uuid

import pytest

from services.contract.config import KafkaConfig
from services.contract.errors import Unavailable
from services.devstack.broker import LocalBroker
from services.server.kafka_io import Ack, DurableProducer
from tests.support.topics import isolated_kafka, read_topic


@pytest.fixture(scope="module")
def kafka(own_broker: LocalBroker) -> KafkaConfig:
    return isolated_kafka(own_broker.bootstrap, f"producer-{uuid.uuid4().hex[:6]}")


def value(i: int, tag: str) -> bytes:
    return json.dumps({"i": i, "tag": tag}).encode()


def test_acks_name_the_stored_records(own_broker: LocalBroker, kafka: KafkaConfig,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    producer = DurableProducer(kafka)
    threaded: list[str] = []
    blocking = producer._send_blocking

    def counting(topic: str, *args: object) -> None:
        threaded.append(topic)
        blocking(topic, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(producer, "_send_blocking", counting)
    tag = uuid.uuid4().hex
    users = [f"u{i}" for i in range(7)]

    async def main() -> list[Ack]:
        first = await producer.send(kafka.feedback_topic, users[0], value(0, tag))
        rest = await asyncio.gather(*(
            producer.send(kafka.feedback_topic, users[i % len(users)], value(i, tag))
            for i in range(1, 300)))
        return [first, *rest]

    try:
        acks = asyncio.run(main())
    finally:
        producer.close()
    # 1. the first write fetched the topic's metadata on a worker thread; the others
    #    were handed to kafka-python on the event loop
    assert threaded == [kafka.feedback_topic]
    # 2. every ack is distinct and names exactly the record the broker holds there
    assert len({(a.partition, a.offset) for a in acks}) == len(acks) == 300
    assert {a.topic for a in acks} == {kafka.feedback_topic}
    stored = read_topic(own_broker.bootstrap, kafka.feedback_topic,
                        lambda rs: sum(r["value"]["tag"] == tag for r in rs) >= 300)
    at = {(r["partition"], r["offset"]): r for r in stored if r["value"]["tag"] == tag}
    assert len(at) == 300
    for i, ack in enumerate(acks):
        record = at[(ack.partition, ack.offset)]
        assert record["value"]["i"] == i and record["key"] == users[i % len(users)]


def test_a_silent_broker_is_unavailable_not_acknowledged(own_broker: LocalBroker,
                                                         kafka: KafkaConfig) -> None:
    cfg = dataclasses.replace(kafka, produce_timeout_s=1.0)
    latencies: list[tuple[str, bool]] = []
    producer = DurableProducer(cfg, lambda topic, _s, ok: latencies.append((topic, ok)))
    tag = uuid.uuid4().hex

    async def main() -> tuple[Ack, list[BaseException | Ack], Ack]:
        before = await producer.send(cfg.feedback_topic, "u", value(0, tag))
        os.kill(own_broker.pid, signal.SIGSTOP)
        try:
            paused = await asyncio.gather(*(producer.send(cfg.feedback_topic, "u", value(i, tag))
                                            for i in (1, 2, 3)), return_exceptions=True)
        finally:
            os.kill(own_broker.pid, signal.SIGCONT)
        for _ in range(60):  # the producer recovers by itself
            try:
                return before, paused, await producer.send(cfg.feedback_topic, "u",
                                                           value(4, tag))
            except Unavailable:
                await asyncio.sleep(0.5)
        raise AssertionError("no ack after the broker came back")

    try:
        before, paused, after = asyncio.run(main())
    finally:
        producer.close()
    assert isinstance(before, Ack) and isinstance(after, Ack)
    assert all(isinstance(p, Unavailable) for p in paused), paused
    assert latencies[0] == (cfg.feedback_topic, True)
    assert [ok for _, ok in latencies[1:4]] == [False, False, False]


def test_an_unreachable_broker_is_unavailable() -> None:
    from services.devstack.broker import free_port

    cfg = KafkaConfig(bootstrap_servers=f"127.0.0.1:{free_port()}", max_block_s=0.5,
                      produce_timeout_s=1.0)
    producer = DurableProducer(cfg)
    with pytest.raises(Unavailable):
        asyncio.run(producer.send("feedback", "u", b"{}"))
    producer.close()
