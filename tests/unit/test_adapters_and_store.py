from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from services.contract import store as store_module
from services.contract.config import KafkaConfig, from_mapping
from services.contract.records import FeedbackRecord, GenerationRecord, RecordError
from services.contract.store import (
    AdapterManifest,
    AdapterRejected,
    AdapterStore,
    StaleParent,
)
from services.server.config import ServerConfig
from services.server.metrics import ADAPTER_REFUSAL_REASONS
from services.server.routing import AdapterRegistry, LoraCacheModel


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


def test_lora_cache_model_is_lru_for_one_request_at_a_time() -> None:
    """Against vLLM's rule as a plain list: a use of a missing adapter loads it,
    evicting the least recently used one when ``capacity`` are loaded."""
    rng = random.Random(0)
    cache, reference = LoraCacheModel(capacity=3), []
    hits = 0
    for _ in range(500):
        lora_id = rng.randint(1, 6)
        expected = lora_id in reference
        if expected:
            reference.remove(lora_id)
        elif len(reference) == 3:
            reference.pop(0)
        reference.append(lora_id)
        if rng.random() < 0.2:  # add_lora of a new version
            cache.load(lora_id)
            continue
        assert cache.acquire(lora_id) is expected
        cache.release(lora_id)
        assert cache.resident == set(reference)
        hits += expected
    assert 50 < hits < 350, "both hits and misses were exercised"


def test_lora_cache_model_keeps_adapters_in_use_and_forgets_removed_ones() -> None:
    cache = LoraCacheModel(capacity=2)
    assert cache.acquire(1) is False, "never loaded: a miss"
    cache.load(2)
    cache.load(3)  # vLLM touches 1 every step while its request runs: 2 goes
    assert cache.resident == {1, 3}
    assert cache.acquire(1) is True
    cache.release(1)
    cache.release(1)
    cache.load(4)  # 1 was used after 3 was loaded: 3 goes
    assert cache.resident == {1, 4}
    cache.remove(4)
    assert cache.acquire(4) is False and cache.resident == {1, 4}
    cache.release(4)
    cache.release(7)  # not loaded: ignored
    assert cache.resident == {1, 4}


def test_refusal_reasons_are_pre_initialised() -> None:
    """Every AdapterRejected reason of store.py has a series from the start."""
    source = Path(store_module.__file__).read_text()
    reasons = set(re.findall(r'AdapterRejected\("(\w+)"', source))
    assert reasons and reasons | {"load_failed"} == set(ADAPTER_REFUSAL_REASONS)


def _adapter(dir_: Path, rank: int = 8, value: float = 0.1) -> Path:
    dir_.mkdir(parents=True)
    (dir_ / "adapter_config.json").write_text(json.dumps(
        {"r": rank, "target_modules": ["q_proj", "v_proj"], "peft_type": "LORA"}))
    save_file({"w": torch.full((2, 2), value)}, str(dir_ / "adapter_model.safetensors"))
    return dir_


def test_publish_versions_and_verify(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "store")
    m1 = store.publish("alice", _adapter(tmp_path / "a"), "base", "", steps=3)
    m2 = store.publish("alice", _adapter(tmp_path / "b"), "base", "v1")
    assert (m1.version, m2.version, m2.parent_version) == ("v1", "v2", "v1")
    assert store.versions("alice") == ["v1", "v2"] and store.users() == ["alice"]
    assert store.verify("alice", "v2", "base", max_rank=8).steps == 0
    assert store.manifest("alice", "v1").steps == 3
    assert not [p for p in (tmp_path / "store" / "alice").iterdir() if p.name.startswith(".")]


def _weights(store: AdapterStore, user: str, version: str) -> bytes:
    return (store.version_dir(user, version) / "adapter_model.safetensors").read_bytes()


def _staging_left(store: AdapterStore, user: str) -> list[str]:
    return [p.name for p in store.user_dir(user).iterdir() if p.name.startswith(".")]


def test_publish_from_a_stale_parent_is_refused(tmp_path: Path) -> None:
    """A zombie trainer's candidate, trained from v1 after another trainer published
    v2, must not become v3 (it would discard v2's progress): the store is unchanged."""
    store = AdapterStore(tmp_path / "store")
    store.publish("alice", _adapter(tmp_path / "a", value=0.1), "base", "")
    store.publish("alice", _adapter(tmp_path / "b", value=0.2), "base", "v1")
    v2 = _weights(store, "alice", "v2")
    for parent in ("v1", "", "v3"):
        with pytest.raises(StaleParent) as err:
            store.publish("alice", _adapter(tmp_path / f"z{parent}", value=0.9), "base", parent)
        assert (err.value.parent_version, err.value.latest) == (parent, "v2")
    assert store.versions("alice") == ["v1", "v2"] and store.latest("alice") == "v2"
    assert _weights(store, "alice", "v2") == v2 and not _staging_left(store, "alice")
    m3 = store.publish("alice", _adapter(tmp_path / "c", value=0.3), "base", "v2")
    assert (m3.version, m3.parent_version) == ("v3", "v2")
    with pytest.raises(StaleParent):  # the first version is fenced too: "" is a parent
        store.publish("bob", _adapter(tmp_path / "d"), "base", "v1")
    assert store.versions("bob") == []


def test_publish_losing_a_rename_race_is_refused_cleanly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two trainers publish from the same parent; the other one's rename lands between
    this one's parent check and its rename. The loser gets StaleParent (not an OSError),
    the winner's version stays intact, and no staging directory is left behind."""
    store = AdapterStore(tmp_path / "store")
    store.publish("alice", _adapter(tmp_path / "a", value=0.1), "base", "")
    rival = AdapterStore(tmp_path / "store")
    real_rename = store_module.os.rename
    raced: list[AdapterManifest] = []
    ours: list[str] = []

    def rename_after_rival(src: str, dst: str) -> None:
        if not ours:  # the rival wins the race for v2 just before our rename
            ours.append(src)
            raced.append(rival.publish("alice", _adapter(tmp_path / "r", value=0.5),
                                       "base", "v1"))
        real_rename(src, dst)

    monkeypatch.setattr(store_module.os, "rename", rename_after_rival)
    with pytest.raises(StaleParent) as err:
        store.publish("alice", _adapter(tmp_path / "b", value=0.9), "base", "v1")
    assert err.value.latest == "v2" and raced[0].version == "v2"
    assert store.versions("alice") == ["v1", "v2"]
    assert store.manifest("alice", "v2").sha256 == raced[0].sha256
    assert not _staging_left(store, "alice")


def test_concurrent_publishers_from_one_parent_make_one_version(tmp_path: Path) -> None:
    """Real threads: of 8 publishers trained from v1, exactly one becomes v2."""
    import threading

    store = AdapterStore(tmp_path / "store")
    store.publish("alice", _adapter(tmp_path / "a"), "base", "")
    dirs = [_adapter(tmp_path / f"c{i}", value=0.1 * i) for i in range(8)]
    outcomes: list[str] = []
    gate = threading.Barrier(len(dirs))

    def publish(d: Path) -> None:
        gate.wait()
        try:
            outcomes.append(AdapterStore(tmp_path / "store").publish("alice", d, "base",
                                                                     "v1").version)
        except StaleParent:
            outcomes.append("refused")

    threads = [threading.Thread(target=publish, args=(d,)) for d in dirs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["refused"] * 7 + ["v2"]
    assert store.versions("alice") == ["v1", "v2"] and not _staging_left(store, "alice")


@pytest.mark.parametrize(("make", "reason", "base", "max_rank"), [
    (lambda d: _adapter(d, value=float("nan")), "non_finite", "base", 8),
    (lambda d: _adapter(d, rank=16), "rank", "base", 8),
    (lambda d: _adapter(d), "wrong_base", "other-base", 8),
])
def test_verify_refuses(tmp_path: Path, make, reason: str, base: str, max_rank: int) -> None:  # type: ignore[no-untyped-def]
    store = AdapterStore(tmp_path / "store")
    m = store.publish("bob", make(tmp_path / "a"), "base", "")
    with pytest.raises(AdapterRejected) as err:
        store.verify("bob", m.version, base, max_rank)
    assert err.value.reason == reason


def test_verify_refuses_tampered_weights(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "store")
    m = store.publish("bob", _adapter(tmp_path / "a"), "base", "")
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
