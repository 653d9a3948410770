"""Online evaluation: Wilson intervals against a plain reference, comparisons from
rankings and thumbs of interleaved candidates, the rollback rule, and a rollback
through a real adapter store (weights republished, fenced, announced)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from services.contract.records import AdapterUpdateRecord, GenerationRecord
from services.contract.status import LabelerReport, OnlineWinRate, TrainerReport
from services.contract.store import AdapterStore, sha256_file
from trainer.data.preferences import FeedbackEvent
from trainer.ingest.journal import Joined
from trainer.loop.online import (
    Comparison,
    OnlineConfig,
    comparisons,
    should_roll_back,
    tally,
    wilson_interval,
)
from trainer.loop.publish import Publisher
from trainer.loop.rollback import OnlineReviewer
from trainer.metrics import TrainerMetrics


def reference_wilson(k: float, n: int, z: float) -> tuple[float, float]:
    """Solve |p_hat - p| = z sqrt(p (1 - p) / n) for p by bisection."""
    p_hat = k / n

    def outside(p: float) -> bool:
        return abs(p_hat - p) > z * math.sqrt(p * (1 - p) / n)

    def edge(lo: float, hi: float, left_inside: bool) -> float:
        for _ in range(100):
            mid = (lo + hi) / 2
            if outside(mid) == left_inside:
                hi = mid
            else:
                lo = mid
        return (lo + hi) / 2

    return (0.0 if p_hat == 0 else edge(0.0, p_hat, False),
            1.0 if p_hat == 1 else edge(p_hat, 1.0, True))


@pytest.mark.parametrize(("k", "n"), [(8, 10), (0, 5), (5, 5), (12.5, 30), (1, 1), (50, 100)])
def test_wilson_matches_the_reference(k: float, n: int) -> None:
    lo, hi = wilson_interval(k, n, 1.96)
    rlo, rhi = reference_wilson(k, n, 1.96)
    assert lo == pytest.approx(rlo, abs=1e-9) and hi == pytest.approx(rhi, abs=1e-9)
    assert lo <= k / n <= hi
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)


def gen(rid: str, group: str, arm: str = "served", arm_version: str = "",
        version: str = "v2") -> GenerationRecord:
    return GenerationRecord(
        response_id=rid, group_id=group, user_id="alice", candidate_index=0, num_candidates=3,
        messages=[], prompt_token_ids=[], completion=rid, completion_token_ids=[],
        finish_reason="stop", adapter_version=version, base_model="m", sampling={},
        created_at=0.0, arm=arm, arm_version=arm_version)


def ranking(seq: int, gens: list[GenerationRecord], labeler: str = "alice") -> Joined:
    event = FeedbackEvent(f"f{seq}", "alice", labeler, gens[0].group_id, "ranking",
                          tuple(g.response_id for g in gens), None, 0.0)
    return Joined(seq, event, {g.response_id: g for g in gens})


def thumbs(seq: int, g: GenerationRecord, up: bool) -> Joined:
    event = FeedbackEvent(f"t{seq}", "alice", "alice", g.group_id, "thumbs",
                          (g.response_id,), up, 0.0)
    return Joined(seq, event, {g.response_id: g})


def test_rankings_and_thumbs_become_comparisons() -> None:
    s1, s2, base = gen("a", "g1"), gen("b", "g1"), gen("c", "g1", "base")
    p1, parent = gen("d", "g2"), gen("e", "g2", "parent", "v1")
    t1, t2, tarm = gen("h", "g3"), gen("i", "g3"), gen("j", "g3", "parent", "v1")
    joined = [
        ranking(1, [s1, s2, base]),  # both served above the arm: win
        ranking(2, [s1, base, s2]),  # half above: tie
        ranking(3, [parent, p1]),  # the parent first: loss
        ranking(4, [gen("x", "g4"), gen("y", "g4")]),  # no arm: no comparison
        thumbs(5, t1, True), thumbs(6, tarm, True), thumbs(7, t2, False),  # 0.5 vs 1: loss
        thumbs(8, t2, True),  # t2 re-rated: served 1.0 vs the arm 1.0: tie
    ]
    comps = comparisons(joined)
    assert comps == [Comparison("v2", "base", "", "win"), Comparison("v2", "base", "", "tie"),
                     Comparison("v2", "parent", "v1", "loss"),
                     Comparison("v2", "parent", "v1", "tie")]
    vs_parent = tally(comps, "v2", "parent")
    assert (vs_parent.wins, vs_parent.losses, vs_parent.ties) == (0, 1, 1)
    assert vs_parent.arm_version == "v1" and vs_parent.win_rate == 0.25
    assert tally(comps, "v3", "base") == OnlineWinRate(version="v3", upper=1.0)


def test_rollback_rule() -> None:
    cfg = OnlineConfig(rollback_min_comparisons=10)
    lost = tally([Comparison("v2", "parent", "v1", "loss")] * 9
                 + [Comparison("v2", "parent", "v1", "win")], "v2", "parent")
    assert lost.upper < 0.5 and "v2 lost to its parent v1" in should_roll_back(cfg, lost)
    assert should_roll_back(OnlineConfig(rollback_min_comparisons=11), lost) == ""
    assert should_roll_back(OnlineConfig(rollback_min_comparisons=10, rollback=False),
                            lost) == ""
    close = tally([Comparison("v2", "parent", "v1", "loss")] * 6
                  + [Comparison("v2", "parent", "v1", "win")] * 4, "v2", "parent")
    assert close.upper >= 0.5 and should_roll_back(cfg, close) == ""


def _adapter(tmp: Path, name: str, payload: bytes) -> Path:
    d = tmp / name
    d.mkdir()
    (d / "adapter_model.safetensors").write_bytes(payload)
    (d / "adapter_config.json").write_text(json.dumps({"r": 8}))
    return d


def test_a_version_losing_to_its_parent_is_rolled_back(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "store")
    announced: list[AdapterUpdateRecord] = []
    publisher = Publisher(store, announced.append, "m")
    store.publish("alice", _adapter(tmp_path, "a1", b"good"), "m", "", steps=8)
    store.publish("alice", _adapter(tmp_path, "a2", b"bad"), "m", "v1", steps=12)
    metrics = TrainerMetrics()
    reviewer = OnlineReviewer(OnlineConfig(rollback_min_comparisons=12), store, publisher,
                              metrics)
    joined = []
    for i in range(12):  # the parent ranked first every time
        served, parent = gen(f"s{i}", f"g{i}"), gen(f"p{i}", f"g{i}", "parent", "v1")
        joined.append(ranking(i, [parent, served]))
    few = reviewer.review("alice", joined[:11])
    assert few.rolled_back_to == "" and few.vs_parent.losses == 11
    assert store.manifest("alice", "v2").metrics["online_vs_parent"]["losses"] == 11
    review = reviewer.review("alice", joined)
    assert review.rolled_back_to == "v3" and "rolled back v2 -> v3" in review.rollback
    m3 = store.manifest("alice", "v3")
    assert m3.parent_version == "v2" and m3.parent_arm == "" and m3.steps == 8
    assert m3.metrics["rolled_back_from"] == "v2" and m3.metrics["restores"] == "v1"
    assert "lost to its parent v1" in m3.metrics["rollback_reason"]
    assert m3.sha256 == sha256_file(store.version_dir("alice", "v1") / "adapter_model.safetensors")
    assert [(r.version, r.metrics["rolled_back_from"]) for r in announced] == [("v3", "v2")]
    assert metrics.rollbacks._value.get() == 1
    loss = metrics.online_comparisons.labels("parent", "loss")._value.get()
    assert loss == 12, "each comparison counted once over reviews"
    again = reviewer.review("alice", joined)  # v3 has no comparisons yet: stays
    assert again.rolled_back_to == "" and store.latest("alice") == "v3"
    assert again.rollback == review.rollback, "the last rollback stays in the report"


def test_online_fields_round_trip_and_reach_the_grpc_status(tmp_path: Path) -> None:
    from services.server.core import UserStatusView
    from services.server.servicer import to_proto_status

    report = TrainerReport(
        feedback_events=3, preference_pairs=6, thumbs_labels=0, reward_model_accuracy=0.8,
        reward_model_shared_accuracy=0.5, reward_model_heldout_pairs=8, last_reward_before=0.1,
        last_reward_after=0.4, last_kl=0.2, last_publish_decision="published v2",
        reward_model_judge_accuracy=0.7, last_judge_before=0.05, last_judge_after=0.3,
        labelers=(LabelerReport("alice", 0.9, 10, False),), updated_at=1.5,
        online_vs_base=OnlineWinRate("v2", "", 7, 2, 1, 0.75, 0.45, 0.92),
        online_vs_parent=OnlineWinRate("v2", "v1", 1, 4, 0, 0.2, 0.04, 0.62),
        last_rollback="rolled back v2 -> v3")
    store = AdapterStore(tmp_path)
    store.write_status("alice", report)
    assert store.read_status("alice") == report
    status = to_proto_status(UserStatusView("alice", "v2", 1, 2, report))
    assert (status.online_vs_base.wins, status.online_vs_base.upper) == (7, 0.92)
    assert status.online_vs_parent.arm_version == "v1" and status.online_vs_parent.losses == 4
    assert status.last_rollback == "rolled back v2 -> v3"
