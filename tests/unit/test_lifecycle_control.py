"""The pure parts of the lifecycle operations: the control state in the store (atomic,
durable, defaults), the admin check, the registry routing a reset user to the base
model, and the trainer leaving a held user alone (publisher and online reviewer)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.contract.auth import AuthConfig, Authenticator
from services.contract.errors import PermissionDenied
from services.contract.records import AdapterUpdateRecord
from services.contract.store import AdapterStore, StaleParent, UserControl
from services.server.routing import AdapterRegistry
from tests.unit.test_online import _adapter, gen, ranking
from trainer.loop.online import OnlineConfig
from trainer.loop.publish import Publisher
from trainer.loop.rollback import OnlineReviewer
from trainer.metrics import TrainerMetrics


def test_control_round_trips_and_defaults(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path)
    assert store.read_control("alice") == UserControl() and not UserControl().held
    store.write_control("alice", UserControl(pinned="v2", updated_at=3.0))
    assert AdapterStore(tmp_path).read_control("alice") == UserControl("v2", False, 3.0)
    assert store.read_control("alice").held and UserControl(reset=True).held
    assert json.loads((tmp_path / "alice" / "control.json").read_text())["pinned"] == "v2"
    assert not list((tmp_path / "alice").glob(".control.json.*")), "no temp file left"


def test_admin_check() -> None:
    auth = Authenticator(AuthConfig(secrets="s" * 40))
    user = (("authorization", f"Bearer {auth.issue('alice', 60)}"),)
    ops = (("authorization", f"Bearer {auth.issue('ops', 60, admin=True)}"),)
    with pytest.raises(PermissionDenied, match="admin token"):
        auth.check_admin(user)
    assert auth.check_admin(ops).admin
    assert Authenticator(AuthConfig()).check_admin(()).admin, "auth off: open"


def test_registry_routes_a_removed_user_to_the_base_model() -> None:
    reg = AdapterRegistry()
    slot, parent = reg.new_slot("alice", "v2", "/a/v2"), reg.new_slot("alice", "v1", "/a/v1")
    reg.install(slot, parent)
    held = reg.acquire("alice")
    assert reg.remove("alice") == [parent], "the busy slot waits for its request"
    assert reg.version_of("alice") == "" and reg.parent_of("alice") is None
    assert held is not None and reg.release(held) is slot
    assert reg.remove("alice") == [] and reg.is_newer("alice", "v1")


def test_a_control_record_round_trips() -> None:
    record = AdapterUpdateRecord("alice", "", "", "m", 1.0, control=True)
    assert AdapterUpdateRecord.from_json(record.to_json()).control
    old = b'{"schema_version":1,"type":"adapter_update","user_id":"a","version":"v1",' \
          b'"sha256":"x","base_model":"m","created_at":1}'
    assert AdapterUpdateRecord.from_json(old).control is False


def test_the_trainer_leaves_a_held_user_alone(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "store")
    announced: list[AdapterUpdateRecord] = []
    publisher = Publisher(store, announced.append, "m")
    store.publish("alice", _adapter(tmp_path, "a1", b"good"), "m", "")
    store.publish("alice", _adapter(tmp_path, "a2", b"bad"), "m", "v1")
    store.write_control("alice", UserControl(pinned="v2"))
    with pytest.raises(StaleParent, match="v2 \\(pinned\\)"):
        publisher.publish("alice", tmp_path / "a1", parent_version="v2", steps=1,
                          feedback_count=1, reward_before=0, reward_after=0, kl=0, metrics={})
    reviewer = OnlineReviewer(OnlineConfig(rollback_min_comparisons=3), store, publisher,
                              TrainerMetrics())
    joined = [ranking(i, [gen(f"p{i}", f"g{i}", "parent", "v1"), gen(f"s{i}", f"g{i}")])
              for i in range(5)]
    assert reviewer.review("alice", joined).rolled_back_to == "", "pinned: no rollback"
    store.write_control("alice", UserControl(reset=True))
    assert reviewer.review("alice", joined).rolled_back_to == ""
    assert store.versions("alice") == ["v1", "v2"] and announced == []
    store.write_control("alice", UserControl())
    assert reviewer.review("alice", joined).rolled_back_to == "v3", "unpinned: it acts"
