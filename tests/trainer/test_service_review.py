"""The trainer reviews a user's served version when new feedback arrives that does not
yet make the user due for a turn (TrainerService.step around a fake learner and a
fake reviewer): a rollback does not wait for a training turn, each new event count is
reviewed once, and the report gets the online figures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from services.contract.status import OnlineWinRate
from tests.trainer.test_service_faults import FakeLearner, Offsets, feedback
from trainer.config import ScheduleConfig, TrainerConfig
from trainer.ingest.journal import Joined
from trainer.loop.rollback import OnlineReview
from trainer.loop.service import TrainerService


class FakeReviewer:
    """Records reviews; rolls back once a user has ``roll_back_at`` joined events."""

    def __init__(self, roll_back_at: int) -> None:
        self.roll_back_at = roll_back_at
        self.reviews: list[tuple[str, int]] = []

    def review(self, user_id: str, joined: Sequence[Joined]) -> OnlineReview:
        self.reviews.append((user_id, len(joined)))
        vs_parent = OnlineWinRate("v2", "v1", 0, len(joined), 0, 0.0, 0.0, 0.4)
        if len(joined) >= self.roll_back_at:
            return OnlineReview(OnlineWinRate("v3"), OnlineWinRate("v3"),
                                "rolled back v2 -> v3", "v3")
        return OnlineReview(OnlineWinRate("v2"), vs_parent)


def make(tmp_path: Path) -> TrainerService:
    cfg = TrainerConfig(adapter_store=str(tmp_path / "store"), state_dir=str(tmp_path / "state"),
                        metrics_port=0, schedule=ScheduleConfig(min_new_feedback=100,
                                                                max_wait_s=1e6, min_pairs=1))
    svc = TrainerService(cfg)
    svc.learner = FakeLearner()  # type: ignore[assignment]
    svc.online = FakeReviewer(roll_back_at=3)  # type: ignore[assignment]
    svc.ingest.assigned = frozenset({0, 1})
    svc.offsets = Offsets()  # type: ignore[attr-defined]
    return svc


def test_new_feedback_is_reviewed_without_a_turn(tmp_path: Path) -> None:
    svc = make(tmp_path)
    reviewer: FakeReviewer = svc.online  # type: ignore[assignment]
    feedback(svc, "alice", 0, n=2)
    assert svc.step() is True, "a review ran"
    assert svc.step() is False, "nothing new: no second review"
    assert reviewer.reviews == [("alice", 2)]
    assert svc.learner.turns == []  # type: ignore[attr-defined]
    report = svc.store.read_status("alice")
    assert report is not None and report.online_vs_parent.losses == 2
    assert report.last_rollback == "" and report.feedback_events == 0

    feedback(svc, "alice", 0)
    assert svc.step() is True
    assert reviewer.reviews == [("alice", 2), ("alice", 3)]
    report = svc.store.read_status("alice")
    assert report is not None and report.last_rollback == "rolled back v2 -> v3"
    assert svc.learner.turns == [], "the rollback did not wait for a turn"  # type: ignore[attr-defined]


def test_a_user_without_an_adapter_gets_no_report(tmp_path: Path) -> None:
    svc = make(tmp_path)
    svc.online = FakeReviewer(roll_back_at=100)  # type: ignore[assignment]
    svc.online.review = lambda user_id, joined: OnlineReview()  # type: ignore[method-assign]
    feedback(svc, "bob", 1)
    assert svc.step() is True
    assert svc.store.read_status("bob") is None


def test_a_pinned_or_reset_user_gets_no_turn_until_unpinned(tmp_path: Path) -> None:
    from services.contract.store import UserControl

    cfg = TrainerConfig(adapter_store=str(tmp_path / "store"), state_dir=str(tmp_path / "state"),
                        metrics_port=0, schedule=ScheduleConfig(min_new_feedback=1, min_pairs=1))
    svc = TrainerService(cfg)
    svc.learner = FakeLearner()  # type: ignore[assignment]
    svc.online = FakeReviewer(roll_back_at=100)  # type: ignore[assignment]
    svc.ingest.assigned = frozenset({0, 1})
    svc.offsets = Offsets()  # type: ignore[attr-defined]
    feedback(svc, "alice", 0, n=2)
    for control in (UserControl(pinned="v1"), UserControl(reset=True)):
        svc.store.write_control("alice", control)
        assert svc.step() is False
        assert svc.learner.turns == [] and svc.online.reviews == []  # type: ignore[attr-defined]
    svc.store.write_control("alice", UserControl())
    assert svc.step() is True
    assert svc.learner.turns == ["alice"], "unpinned: its feedback is still new"  # type: ignore[attr-defined]
