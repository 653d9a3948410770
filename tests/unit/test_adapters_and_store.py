from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from services.adapters import AdapterRegistry
from services.config import KafkaConfig, ServerConfig, from_mapping
from services.records import FeedbackRecord, GenerationRecord, RecordError
from services.store import AdapterRejected, AdapterStore


def test_registry_keeps_old_version_until_its_requests_finish() -> None:
    reg = AdapterRegistry()
    v1 = reg.new_slot("alice", "v1", "/p1")
    assert reg.install(v1) is None
    held = reg.acquire("alice")
    assert held is v1 and v1.in_flight == 1
    v2 = reg.new_slot("alice", "v2", "/p2")
    assert v2.lora_int_id != v1.lora_int_id and v2.lora_name == "alice@v2"
    assert reg.install(v2) is None, "v1 is still in use"
    assert reg.acquire("alice") is v2
    assert reg.release(v1) is v1, "v1's last request finished: remove it"
    assert reg.release(v2) is None, "the current version stays"
    assert reg.is_newer("alice", "v3") and not reg.is_newer("alice", "v2")
    v3 = reg.new_slot("alice", "v3", "/p3")
    assert reg.install(v3) is v2, "an unused old version is removed at once"
    assert reg.version_of("alice") == "v3" and reg.version_of("bob") == ""


def _adapter(dir_: Path, rank: int = 8, value: float = 0.1) -> Path:
    dir_.mkdir(parents=True)
    (dir_ / "adapter_config.json").write_text(json.dumps(
        {"r": rank, "target_modules": ["q_proj", "v_proj"], "peft_type": "LORA"}))
    save_file({"w": torch.full((2, 2), value)}, str(dir_ / "adapter_model.safetensors"))
    return dir_


def test_publish_versions_and_verify(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "store")
    m1 = store.publish("alice", _adapter(tmp_path / "a"), "base", steps=3)
    m2 = store.publish("alice", _adapter(tmp_path / "b"), "base")
    assert (m1.version, m2.version, m2.parent_version) == ("v1", "v2", "v1")
    assert store.versions("alice") == ["v1", "v2"] and store.users() == ["alice"]
    assert store.verify("alice", "v2", "base", max_rank=8).steps == 0
    assert store.manifest("alice", "v1").steps == 3
    assert not [p for p in (tmp_path / "store" / "alice").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(("make", "reason", "base", "max_rank"), [
    (lambda d: _adapter(d, value=float("nan")), "non_finite", "base", 8),
    (lambda d: _adapter(d, rank=16), "rank", "base", 8),
    (lambda d: _adapter(d), "wrong_base", "other-base", 8),
])
def test_verify_refuses(tmp_path: Path, make, reason: str, base: str, max_rank: int) -> None:  # type: ignore[no-untyped-def]
    store = AdapterStore(tmp_path / "store")
    m = store.publish("bob", make(tmp_path / "a"), "base")
    with pytest.raises(AdapterRejected) as err:
        store.verify("bob", m.version, base, max_rank)
    assert err.value.reason == reason


def test_verify_refuses_tampered_weights(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "store")
    m = store.publish("bob", _adapter(tmp_path / "a"), "base")
    save_file({"w": torch.zeros(2, 2)}, str(store.version_dir("bob", m.version)
                                            / "adapter_model.safetensors"))
    with pytest.raises(AdapterRejected, match="checksum"):
        store.verify("bob", m.version, "base", 8)


def test_records_round_trip_and_errors() -> None:
    fb = FeedbackRecord("f1", "alice", "alice", "ranking", ["a", "b"], "g", 1.0)
    assert FeedbackRecord.from_json(fb.to_json()) == fb
    body = json.loads(fb.to_json())
    assert body["schema_version"] == 1 and body["type"] == "feedback"
    for raw in (b"nope", b"[]", b'{"schema_version": 9, "type": "feedback"}',
                b'{"schema_version": 1, "type": "feedback"}', fb.to_json()):
        with pytest.raises(RecordError):
            GenerationRecord.from_json(raw)


def test_config_from_environment() -> None:
    cfg = from_mapping(ServerConfig, {"P_PORT": "7000", "P_KAFKA_BOOTSTRAP_SERVERS": "k:9",
                                      "P_ENGINE_ENFORCE_EAGER": "false",
                                      "P_LIMITS_MAX_CANDIDATES": "2"}, "P_")
    assert cfg.port == 7000 and cfg.kafka == KafkaConfig(bootstrap_servers="k:9")
    assert cfg.engine.enforce_eager is False and cfg.limits.max_candidates == 2
    with pytest.raises(ValueError, match="P_PORT"):
        from_mapping(ServerConfig, {"P_PORT": "x"}, "P_")
