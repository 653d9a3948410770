"""The trainer -> server status contract is a typed record: a renamed or missing field is
refused, never read as zero."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from services.contract.status import LabelerReport, StatusError, TrainerReport
from services.contract.store import STATUS_FILE, AdapterStore

REPORT = TrainerReport(
    feedback_events=7, preference_pairs=12, thumbs_labels=3, reward_model_accuracy=0.75,
    reward_model_shared_accuracy=0.5, reward_model_heldout_pairs=8, last_reward_before=0.1,
    last_reward_after=0.4, last_kl=0.2, last_publish_decision="published v2",
    reward_model_judge_accuracy=0.7, last_judge_before=0.05, last_judge_after=0.3,
    labelers=(LabelerReport("alice", 0.9, 10, False),), updated_at=1.5, ppo_steps_total=40,
    ppo_max_steps=20_000, reward_threshold=1.25, training_state="training")


def test_round_trip_through_the_store(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path)
    assert store.read_status("alice") is None
    store.write_status("alice", REPORT)
    assert store.read_status("alice") == REPORT


def test_a_renamed_field_is_refused(tmp_path: Path) -> None:
    body = json.loads(REPORT.to_json())
    body["rm_accuracy"] = body.pop("reward_model_accuracy")
    with pytest.raises(StatusError, match="reward_model_accuracy"):
        TrainerReport.from_json(json.dumps(body))
    store = AdapterStore(tmp_path)
    store.write_status("bob", REPORT)
    (store.user_dir("bob") / STATUS_FILE).write_text(json.dumps(body))
    assert store.read_status("bob") is None  # refused and logged, not zeros


def test_training_fields_round_trip_and_reach_the_grpc_status(tmp_path: Path) -> None:
    from services.server.core import UserStatusView
    from services.server.servicer import to_proto_status

    store = AdapterStore(tmp_path)
    capped = dataclasses.replace(REPORT, reward_threshold=None,
                                 training_state="step cap reached", ppo_steps_total=20_000)
    for report in (REPORT, capped):
        store.write_status("alice", report)
        assert store.read_status("alice") == report
    old = json.loads(REPORT.to_json())
    old["schema_version"] = 1
    for name in ("ppo_steps_total", "ppo_max_steps", "reward_threshold", "training_state"):
        old.pop(name)
    with pytest.raises(StatusError, match="schema_version"):
        TrainerReport.from_json(json.dumps(old))  # an older record is refused, not zeros

    status = to_proto_status(UserStatusView("alice", "v3", 1, 2, REPORT))
    assert (status.ppo_steps_total, status.ppo_max_steps, status.training_state) == (
        40, 20_000, "training")
    assert status.HasField("reward_threshold") and status.reward_threshold == 1.25
    status = to_proto_status(UserStatusView("alice", "v3", 1, 2, capped))
    assert not status.HasField("reward_threshold"), "no threshold: unset, not 0"
    assert (status.ppo_steps_total, status.training_state) == (20_000, "step cap reached")
    assert to_proto_status(UserStatusView("bob", "", 0, 0)).training_state == ""
