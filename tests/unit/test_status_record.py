"""The trainer -> server status contract is a typed record: a renamed or missing field is
refused, never read as zero."""

from __future__ import annotations

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
    labelers=(LabelerReport("alice", 0.9, 10, False),), updated_at=1.5)


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
