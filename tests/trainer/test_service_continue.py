"""The trainer loop trains on without new feedback until the seed's stop rule
(TrainerService.step around a fake learner): a user below its threshold and step cap
gets further turns on its fitted reward model, a user at the threshold or the cap does
not, users with new feedback go first, and GetUserStatus reports each user's state."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.trainer.test_service_faults import FakeLearner, Offsets, feedback, run_until_idle
from trainer.config import ScheduleConfig, TrainerConfig
from trainer.data.examples import UserExamples
from trainer.loop.learner import TurnResult
from trainer.loop.service import TrainerService
from trainer.ppo.config import PPOConfig

MAX_STEPS = 6


class SteppingLearner(FakeLearner):
    """A PPO stand-in: 2 steps a turn up to the step cap; a user in ``threshold_at``
    reaches its threshold at that many steps (found on the next turn's first rollout,
    as PPOTrainer does); a user in ``thin`` has too little data; the gate refuses a
    candidate below ``publish_from`` steps."""

    def __init__(self) -> None:
        super().__init__()
        self.total: dict[str, int] = {}
        self.threshold_at: dict[str, int] = {}
        self.thin: set[str] = set()
        self.publish_from = 0
        self.published: dict[str, int] = {}

    def turn(self, user_id: str, ex: UserExamples,
             should_stop: Callable[[], bool] = lambda: False,
             refit_reward: bool = True, known_erasure: float = 0.0) -> TurnResult:
        if (stopped := super().turn(user_id, ex, should_stop, refit_reward,
                                    known_erasure)).interrupted:
            return stopped
        if user_id in self.thin:
            return TurnResult(user_id, "waiting: too little preference data")
        before = self.total.get(user_id, 0)
        if before >= self.threshold_at.get(user_id, MAX_STEPS + 1):
            stop, steps = "threshold", 0
        else:
            steps = min(2, MAX_STEPS - before)
            stop = "max_steps" if before + steps >= MAX_STEPS else "budget"
        total = self.total[user_id] = before + steps
        if steps and total >= self.publish_from:
            version = self.published[user_id] = self.published.get(user_id, 0) + 1
            return TurnResult(user_id, f"published v{version}", f"v{version}", steps=steps,
                              ppo_stop=stop, ppo_total_steps=total)
        return TurnResult(user_id, "kept: candidate judge reward not higher", steps=steps,
                          ppo_stop=stop, ppo_total_steps=total)


def make_service(tmp_path: Path, **schedule: object) -> TrainerService:
    cfg = TrainerConfig(adapter_store=str(tmp_path / "store"), state_dir=str(tmp_path / "state"),
                        metrics_port=0, ppo=PPOConfig(max_steps=MAX_STEPS, reward_threshold=0.8),
                        schedule=ScheduleConfig(min_new_feedback=2, min_pairs=1,
                                                continue_min_interval_s=0.0,
                                                **schedule))  # type: ignore[arg-type]
    svc = TrainerService(cfg)
    svc.learner = SteppingLearner()  # type: ignore[assignment]
    svc.ingest.assigned = frozenset({0, 1})
    svc.offsets = Offsets()  # type: ignore[attr-defined]
    return svc


@pytest.fixture
def service(tmp_path: Path) -> TrainerService:
    return make_service(tmp_path)


def learner_of(svc: TrainerService) -> SteppingLearner:
    return svc.learner  # type: ignore[return-value]


def state(svc: TrainerService, user: str) -> tuple[str, int]:
    status = svc.store.read_status(user)
    assert status is not None
    assert status.ppo_max_steps == MAX_STEPS and status.reward_threshold == 0.8
    return status.training_state, status.ppo_steps_total


def test_users_below_the_stop_rule_train_on_without_new_feedback(
        service: TrainerService) -> None:
    learner = learner_of(service)
    learner.threshold_at = {"alice": 4}
    learner.thin = {"thin"}
    for user, partition in (("alice", 0), ("bob", 1), ("thin", 0)):
        feedback(service, user, partition, n=2)
    run_until_idle(service)
    # one turn each on new feedback (reward model refitted), then PPO turns on the fitted
    # reward model, least recently trained first, until each user's stop rule is met
    assert learner.turns == ["alice", "bob", "thin",  # new feedback
                             "alice", "bob",           # 4 steps each
                             "alice", "bob"]           # alice at its threshold, bob capped
    assert learner.refits == [True] * 3 + [False] * 4
    assert learner.total == {"alice": 4, "bob": 6}
    assert state(service, "alice") == ("threshold reached", 4)
    assert state(service, "bob") == ("step cap reached", 6)
    assert state(service, "thin") == ("waiting for data", 0)
    assert service.journal.pending_users({0, 1}) == {}
    assert not service.step(), "nobody below the stop rule: the loop idles"

    # new feedback makes a stopped user due again (its reward model may have moved)
    feedback(service, "bob", 1, n=2)
    run_until_idle(service)
    assert learner.turns[7:] == ["bob"] and learner.refits[7:] == [True]
    assert state(service, "bob") == ("step cap reached", 6)


def test_users_with_new_feedback_go_first(service: TrainerService) -> None:
    learner = learner_of(service)
    for user in ("alice", "bob", "carol"):
        feedback(service, user, 0, n=2)
    for _ in range(3):
        assert service.step()
    assert learner.turns == ["alice", "bob", "carol"]
    assert state(service, "carol") == ("training", 2)
    # carol, trained most recently, sends feedback: she goes before alice and bob
    feedback(service, "carol", 0, n=2)
    assert service.step() and learner.turns[-1] == "carol" and learner.refits[-1]
    # one event (not due yet) still puts a continuing user first, and is trained on
    feedback(service, "bob", 0, n=1)
    assert service.step() and learner.turns[-1] == "bob" and learner.refits[-1]
    assert service.journal.pending_users({0}) == {}
    assert service.step() and learner.turns[-1] == "alice" and not learner.refits[-1]


def test_a_user_refused_by_the_gate_keeps_training_until_it_publishes(
        service: TrainerService) -> None:
    learner = learner_of(service)
    learner.publish_from = 4
    feedback(service, "alice", 0, n=2)
    assert service.step()
    status = service.store.read_status("alice")
    assert status is not None and status.last_publish_decision.startswith("kept:")
    assert status.training_state == "training"
    assert service.step()
    status = service.store.read_status("alice")
    assert status is not None and status.last_publish_decision == "published v1"
    assert learner.refits == [True, False]


def test_feedback_arriving_during_a_turn_without_it_stays_new(
        service: TrainerService) -> None:
    learner = learner_of(service)
    feedback(service, "alice", 0, n=2)
    assert service.step()

    def feedback_arrives(user: str, should_stop: Callable[[], bool]) -> bool:
        feedback(service, user, 0, n=1)
        return False

    learner.during = feedback_arrives
    assert service.step() and not learner.refits[-1]
    learner.during = lambda user, stop: False
    assert service.journal.pending_users({0}) == {"alice": (1, pytest.approx(0.0, abs=5))}
    assert service.step() and learner.refits[-1], "trained on at the next turn"
    assert service.journal.pending_users({0}) == {}


def test_a_turn_without_new_feedback_gives_way_to_a_due_user(service: TrainerService) -> None:
    """A due user does not wait for another user's turn without new feedback: that turn
    stops between PPO iterations (its steps are kept), the due user goes next, and the
    stopped user continues after. A turn on new feedback is not stopped."""
    learner = learner_of(service)
    feedback(service, "alice", 0, n=2)
    assert service.step() and learner.turns == ["alice"]
    seen: list[tuple[bool, bool]] = []

    def bob_becomes_due(user: str, should_stop: Callable[[], bool]) -> bool:
        if user != "alice":
            return False
        before = should_stop()
        feedback(service, "bob", 1, n=2)
        seen.append((before, should_stop()))
        return should_stop()

    learner.during = bob_becomes_due
    assert service.step() and learner.turns[-1] == "alice" and not learner.refits[-1]
    assert seen == [(False, True)], "alice's turn gives way once bob is due"
    assert service.metrics.turns_interrupted._value.get() == 1
    learner.during = lambda user, stop: False
    assert service.step() and learner.turns[-1] == "bob" and learner.refits[-1]
    assert service.step() and learner.turns[-1] == "alice", "alice continues after"

    # alice with new (not yet due) feedback: her turn is not stopped for a due bob
    feedback(service, "alice", 0, n=1)
    learner.during = bob_becomes_due
    assert service.step() and learner.turns[-1] == "alice" and learner.refits[-1]
    assert seen[-1] == (False, False)
    assert service.metrics.turns_interrupted._value.get() == 1


def test_switched_off_only_new_feedback_trains(tmp_path: Path) -> None:
    svc = make_service(tmp_path, continue_without_feedback=False)
    feedback(svc, "alice", 0, n=2)
    run_until_idle(svc)
    assert learner_of(svc).turns == ["alice"]
    assert state(svc, "alice") == ("waiting for data", 2)


def test_a_restarted_trainer_resumes_users_still_training(tmp_path: Path) -> None:
    svc = make_service(tmp_path)
    feedback(svc, "alice", 0, n=2)
    feedback(svc, "bob", 1, n=2)
    assert svc.step() and svc.step()
    svc.journal.close()
    again = make_service(tmp_path)  # same journal: both trained, neither has new feedback
    learner = learner_of(again)
    learner.total = {"alice": 2, "bob": 6}  # bob's progress already at the cap
    assert again.step() and again.step()
    assert sorted(learner.turns) == ["alice", "bob"] and learner.refits == [False, False]
    assert state(again, "bob") == ("step cap reached", 6)
    again.ingest.assigned = frozenset({1})  # alice's partition moved to another trainer
    assert not again.step(), "bob is capped and alice is no longer this process's"
