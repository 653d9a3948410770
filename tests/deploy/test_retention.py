"""Retention of the topics, wherever they are created (Compose, Kubernetes, the local
stack's ensure_topics): generations and feedback are kept forever, so a trainer that
takes over a partition rebuilds its users' complete data from the beginning. Fast,
no network."""

from __future__ import annotations

import re
from typing import Any

import pytest

from services.contract.config import KafkaConfig
from services.server import kafka_io
from tests.deploy.helpers import REPO, compose, k8s

K = KafkaConfig()
EXPECTED = {K.generations_topic: -1, K.feedback_topic: -1,
            K.adapter_updates_topic: 7 * 86400 * 1000,
            **{t + K.dlq_suffix: 30 * 86400 * 1000
               for t in (K.generations_topic, K.feedback_topic, K.adapter_updates_topic)}}


def check_script(script: str) -> None:
    """The script's create() is called once per topic with its retention, and passes
    that retention both to a creation and to an alter of an existing topic."""
    calls = re.findall(r"^\s*create\s+(\S+)\s+(?:\S+\s+)?(-?\d+)\s*$", script, re.M)
    assert {t: int(ms) for t, ms in calls} == EXPECTED
    body = script[script.index("create() {"):script.index("}")]
    assert "kafka-topics.sh" in body and "--create" in body
    assert re.search(r"--config retention\.ms=\"\$\$?\d\"", body), body
    assert "kafka-configs.sh" in body and "--alter" in body
    assert re.search(r"--add-config retention\.ms=\"\$\$?\d\"", body), body
    assert "compact" not in script, "keyed by user id: compaction would drop history"


def test_retention_in_code_matches_the_documented_one() -> None:
    assert kafka_io.topic_retention_ms(K) == EXPECTED
    assert set(EXPECTED) == set(kafka_io.all_topics(K))


def test_compose_creates_topics_with_retention() -> None:
    check_script(compose()["services"]["topics"]["command"][0])


def test_k8s_job_creates_topics_with_retention() -> None:
    job = k8s("Job", "personalize-topics")["spec"]["template"]["spec"]
    (container,) = job["containers"]
    check_script(container["args"][0])
    env = {e["name"]: e for e in container["env"]}
    ref = env["BOOTSTRAP"]["valueFrom"]["configMapKeyRef"]
    assert (ref["name"], ref["key"]) == ("personalize-trainer-env",
                                         "PERSONALIZE_TRAINER_KAFKA_BOOTSTRAP_SERVERS")


def test_ensure_topics_sets_retention(monkeypatch: pytest.MonkeyPatch) -> None:
    created: dict[str, dict[str, Any]] = {}

    class FakeAdmin:
        def __init__(self, **_: Any) -> None:
            pass

        def list_topics(self) -> list[str]:
            return []

        def create_topics(self, topics: dict[str, dict[str, Any]], **_: Any) -> None:
            created.update(topics)

        def close(self) -> None:
            pass

    monkeypatch.setattr(kafka_io, "KafkaAdminClient", FakeAdmin)
    kafka_io.ensure_topics(K)
    assert {t: int(s["configs"]["retention.ms"]) for t, s in created.items()} == EXPECTED
    assert {s["num_partitions"] for s in created.values()} == {K.partitions}


def test_operations_doc_states_the_retention() -> None:
    doc = (REPO / "docs" / "operations.md").read_text()
    topics = doc[doc.index("## Topics"):doc.index("## Monitoring")]
    assert "`generations`, `feedback` | `retention.ms=-1`" in topics
    assert "kafka-configs.sh" in topics, "how to fix the retention of existing topics"
