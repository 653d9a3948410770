"""Interleaved comparisons: which candidate a comparison arm answers (pure), the
registry's parent slots, and backward-compatible generation records."""

from __future__ import annotations

import json
import random
from collections import Counter

from services.contract.records import GenerationRecord
from services.contract.store import AdapterManifest
from services.server.arms import ArmChoice, choose_arm
from services.server.routing import AdapterRegistry


def test_arm_choice_is_deterministic_with_a_seed() -> None:
    a = [choose_arm(random.Random(3), 0.5, 4, "v2", "v1") for _ in range(5)]
    b = [choose_arm(random.Random(3), 0.5, 4, "v2", "v1") for _ in range(5)]
    assert a == b
    rng1, rng2 = random.Random(11), random.Random(11)
    assert ([choose_arm(rng1, 0.3, 3, "v5", "v4") for _ in range(50)]
            == [choose_arm(rng2, 0.3, 3, "v5", "v4") for _ in range(50)])


def test_arm_rate_arms_and_indices() -> None:
    rng = random.Random(0)
    picks = [choose_arm(rng, 0.25, 4, "v2", "v1") for _ in range(4000)]
    chosen = [p for p in picks if p is not None]
    assert abs(len(chosen) / len(picks) - 0.25) < 0.03
    arms = Counter(p.arm for p in chosen)
    assert set(arms) == {"base", "parent"} and abs(arms["base"] / len(chosen) - 0.5) < 0.06
    assert {p.index for p in chosen} == {0, 1, 2, 3}
    assert all(p.version == ("v1" if p.arm == "parent" else "") for p in chosen)


def test_no_arm_where_it_does_not_apply() -> None:
    rng = random.Random(1)
    for _ in range(200):
        assert choose_arm(rng, 1.0, 1, "v2", "v1") is None, "one candidate: never"
        assert choose_arm(rng, 1.0, 3, "", "") is None, "served by the base model"
        assert choose_arm(rng, 1.0, 3, "v2", "v1", seeded=True) is None, "reproducible"
        assert choose_arm(rng, 0.0, 3, "v2", "v1") is None, "disabled"
    only_base = {choose_arm(rng, 1.0, 2, "v1", "") for _ in range(100)}
    assert {c.arm for c in only_base if c} == {"base"}, "no parent: the base arm only"
    assert all(isinstance(c, ArmChoice) for c in only_base)


def test_old_generation_records_read_as_served() -> None:
    body = {"schema_version": 1, "type": "generation", "response_id": "r", "group_id": "g",
            "user_id": "alice", "candidate_index": 0, "num_candidates": 2, "messages": [],
            "prompt_token_ids": [], "completion": "x", "completion_token_ids": [],
            "finish_reason": "stop", "adapter_version": "v2", "base_model": "m",
            "sampling": {}, "created_at": 1.0}
    record = GenerationRecord.from_json(json.dumps(body).encode())
    assert record.arm == "served" and record.arm_version == ""
    again = GenerationRecord.from_json(
        json.dumps({**body, "arm": "parent", "arm_version": "v1"}).encode())
    assert (again.arm, again.arm_version) == ("parent", "v1")


def test_manifest_parent_arm() -> None:
    m = AdapterManifest("alice", "v3", "m", "sha", parent_version="v2")
    assert m.parent_arm == "v2"
    rollback = AdapterManifest("alice", "v4", "m", "sha", parent_version="v3",
                               comparison_parent="v1")
    assert rollback.parent_arm == "v1"
    assert AdapterManifest("a", "v1", "m", "s", comparison_parent="").parent_arm == ""


def test_registry_parent_slots_are_held_and_retired() -> None:
    reg = AdapterRegistry()
    v1 = reg.new_slot("alice", "v1", "/p1")
    assert reg.install(v1) is None and reg.parent_of("alice") is None
    v2 = reg.new_slot("alice", "v2", "/p2")
    assert reg.install(v2, parent=v1) is None, "v1 becomes v2's parent arm, not retired"
    assert reg.parent_of("alice") is v1 and not v1.retired
    reg.hold(v1)  # a request compares with the parent
    v3 = reg.new_slot("alice", "v3", "/p3")
    assert reg.install(v3, parent=v2) is None, "v2 is reused as the parent"
    assert v1.retired and reg.drain_removable() == [], "v1 is still in use"
    assert reg.release(v1) is v1, "its last request finished: remove it"
    v4 = reg.new_slot("alice", "v4", "/p4")
    assert reg.install(v4) is v3, "no parent arm: the old version goes at once"
    assert reg.drain_removable() == [v2], "and so does the old parent"
    assert reg.parent_of("alice") is None
