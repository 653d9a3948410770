"""Read a topic back with a plain kafka-python consumer (no project code)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from kafka import KafkaConsumer, TopicPartition


def read_topic(bootstrap: str, topic: str, until: Callable[[list[dict[str, Any]]], bool],
               timeout_s: float = 20.0) -> list[dict[str, Any]]:
    """All records of ``topic`` from the beginning, as dicts with key/partition/value,
    polled until ``until(records)`` holds or the timeout passes."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False, fetch_max_wait_ms=100)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                for r in records:
                    out.append({"key": r.key.decode() if r.key else None,
                                "partition": r.partition, "offset": r.offset,
                                "value": json.loads(r.value)})
            if until(out):
                break
        return out
    finally:
        consumer.close()


def isolated_kafka(bootstrap: str, prefix: str, **overrides: Any) -> Any:
    """A KafkaConfig whose topics (``<prefix>-generations`` ...) exist and belong to
    one test alone, so its servers and trainers see no other test's records."""
    from services.contract.config import KafkaConfig
    from services.server.kafka_io import ensure_topics

    cfg = KafkaConfig(bootstrap_servers=bootstrap, generations_topic=f"{prefix}-generations",
                      feedback_topic=f"{prefix}-feedback",
                      adapter_updates_topic=f"{prefix}-adapter-updates",
                      produce_timeout_s=3.0, max_block_s=1.0, **overrides)
    ensure_topics(cfg)
    return cfg


def trainer_topic_env(cfg: Any) -> dict[str, str]:
    """start_trainer overrides that point a trainer at ``cfg``'s topics."""
    return {"kafka_generations_topic": cfg.generations_topic,
            "kafka_feedback_topic": cfg.feedback_topic,
            "kafka_adapter_updates_topic": cfg.adapter_updates_topic}
