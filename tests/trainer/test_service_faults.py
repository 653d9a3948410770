"""The trainer loop (TrainerService.step) around a fake learner: a turn that raises
quarantines its user with backoff while the others keep training, and a turn whose
partition is revoked stops and is not counted as trained."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import TopicPartition

from tests.trainer.test_journal import fb, gen
from trainer.config import ScheduleConfig, TrainerConfig
from trainer.data.examples import UserExamples
from trainer.ingest.journal import Consumed
from trainer.loop.learner import Learner, TurnResult
from trainer.loop.schedule import Quarantine
from trainer.loop.service import TrainerService


class FakeLearner:
    """Records turns; raises for users in ``poison``; ``during`` runs inside a turn."""

    status = Learner.status  # builds the report from the examples and result only

    model_id = "fake-base"

    def __init__(self) -> None:
        self.poison: set[str] = set()
        self.turns: list[str] = []
        self.forgotten: list[str] = []
        self.refits: list[bool] = []
        self.during: Callable[[str, Callable[[], bool]], bool] = lambda user, stop: False

    def turn(self, user_id: str, ex: UserExamples,
             should_stop: Callable[[], bool] = lambda: False,
             refit_reward: bool = True, known_erasure: float = 0.0) -> TurnResult:
        self.turns.append(user_id)
        self.refits.append(refit_reward)
        if user_id in self.poison:
            raise ValueError(f"poison data of {user_id}")
        if self.during(user_id, should_stop):
            return TurnResult(user_id, "interrupted", interrupted=True)
        return TurnResult(user_id, "kept: fake")

    def forget(self, user_id: str) -> None:
        self.forgotten.append(user_id)


class Offsets:
    def __init__(self) -> None:
        self.next: dict[tuple[str, int], int] = {}

    def record(self, topic: str, partition: int, user: str, value: bytes) -> Consumed:
        off = self.next.get((topic, partition), 0)
        self.next[(topic, partition)] = off + 1
        return Consumed(topic, partition, off, user.encode(), value)


@pytest.fixture
def service(tmp_path: Path) -> TrainerService:
    cfg = TrainerConfig(adapter_store=str(tmp_path / "store"), state_dir=str(tmp_path / "state"),
                        metrics_port=0,
                        schedule=ScheduleConfig(min_new_feedback=1, min_pairs=1,
                                                quarantine_base_s=30.0, quarantine_max_s=100.0))
    svc = TrainerService(cfg)
    svc.learner = FakeLearner()  # type: ignore[assignment]
    svc.ingest.assigned = frozenset({0, 1})
    svc.offsets = Offsets()  # type: ignore[attr-defined]
    return svc


def feedback(svc: TrainerService, user: str, partition: int, n: int = 1) -> None:
    """``n`` ranking events of ``user`` joined in the journal, on ``partition``."""
    off: Offsets = svc.offsets  # type: ignore[attr-defined]
    batch = []
    for _ in range(n):
        i = off.next.get(("feedback", partition), 0)
        rids, group = [f"{user}-{i}-a", f"{user}-{i}-b"], f"{user}-g{i}"
        batch += [off.record("generations", partition, user, gen(r, user=user, group=group))
                  for r in rids]
        batch.append(off.record("feedback", partition, user,
                                fb(f"{user}-f{i}", rids, user=user, group=group)))
    svc.journal.apply(batch)


def run_until_idle(svc: TrainerService, limit: int = 20) -> None:
    for _ in range(limit):
        if not svc.step():
            return
    raise AssertionError("the loop never went idle")


def test_a_raising_turn_quarantines_its_user_and_the_others_train(
        service: TrainerService) -> None:
    learner: FakeLearner = service.learner  # type: ignore[assignment]
    learner.poison = {"poison"}
    feedback(service, "poison", 0, n=3)  # most feedback: picked first
    feedback(service, "alice", 0)
    feedback(service, "bob", 1)
    run_until_idle(service)  # returns: the failure did not escape the loop
    assert learner.turns == ["poison", "alice", "bob"]
    assert set(service.journal.pending_users({0, 1})) == {"poison"}, "not marked trained"
    m = service.metrics
    assert m.turn_failures._value.get() == 1 and m.users_quarantined._value.get() == 1
    q = service._quarantine["poison"]
    assert q.failures == 1
    first = service.store.read_status("poison")  # its first turn failed: still reported
    assert first is not None and first.last_publish_decision.startswith("failed: ValueError")

    # a rebalance's moment without partitions does not lift the quarantine
    service.ingest.assigned = frozenset()
    service.step()
    service.ingest.assigned = frozenset({0, 1})
    assert service._quarantine["poison"] == q

    # new feedback of the others is trained while "poison" sits out its backoff
    feedback(service, "alice", 0)
    run_until_idle(service)
    assert learner.turns[3:] == ["alice"]

    # its time comes: it fails again, and waits twice as long
    service._quarantine["poison"] = type(q)(q.failures, until=0.0)
    run_until_idle(service)
    q2 = service._quarantine["poison"]
    assert learner.turns[4:] == ["poison"] and q2.failures == 2
    assert m.turn_failures._value.get() == 2
    assert (q2.until - q.until) == pytest.approx(60.0 - 30.0, abs=5.0)

    # the data is fixed (or the bug): a completed turn lifts the quarantine
    learner.poison = set()
    service._quarantine["poison"] = type(q)(q2.failures, until=0.0)
    run_until_idle(service)
    assert learner.turns[5:] == ["poison"] and "poison" not in service._quarantine
    assert m.users_quarantined._value.get() == 0
    assert service.journal.pending_users({0, 1}) == {}

    # a later failure is reported to GetUserStatus, keeping the last good report
    learner.poison = {"poison"}
    feedback(service, "poison", 0)
    run_until_idle(service)
    status = service.store.read_status("poison")
    assert status is not None and status.feedback_events == 3
    assert status.last_publish_decision.startswith("failed: ValueError: poison data")


def test_a_revoked_partition_stops_the_turn_which_is_not_counted(
        service: TrainerService) -> None:
    learner: FakeLearner = service.learner  # type: ignore[assignment]
    feedback(service, "alice", 0)
    feedback(service, "bob", 1)
    seen: list[tuple[bool, bool]] = []

    def rebalance_during_alice(user: str, should_stop: Callable[[], bool]) -> bool:
        if user != "alice":
            return False
        before = should_stop()
        service.ingest.revoke([TopicPartition("feedback", 0), TopicPartition("generations", 0)])
        seen.append((before, should_stop()))
        return should_stop()

    learner.during = rebalance_during_alice
    run_until_idle(service)
    assert seen == [(False, True)], "ownership is checked live, not only when picked"
    assert learner.turns == ["alice", "bob"] and service.ingest.assigned == {1}
    assert service.metrics.turns_interrupted._value.get() == 1
    assert service.store.read_status("alice") is None
    # alice stays untrained here: its new owner trains it from the journal it rebuilds
    assert set(service.journal.pending_users()) == {"alice"}
    assert service.journal.partition_of("alice") == 0 and service.journal.partition_of("x") is None


def test_an_erasure_is_carried_out_before_the_next_pick(service: TrainerService) -> None:
    """The tombstone's rows went with the ingest transaction; the loop then drops the
    user's state, deletes its store files (also one a turn published meanwhile) and
    tells the replicas, once; a store failure is retried at the next step."""
    from services.contract.records import AdapterUpdateRecord
    from tests.trainer.test_erasure import erasure
    from tests.unit.test_adapters_and_store import _adapter

    learner: FakeLearner = service.learner  # type: ignore[assignment]
    announced: list[AdapterUpdateRecord] = []
    service._announce = announced.append  # type: ignore[method-assign]
    feedback(service, "alice", 0, n=2)
    feedback(service, "bob", 1)
    run_until_idle(service)
    service.store.publish("alice", _adapter(service.store.root.parent / "a"), "m", "")
    service._quarantine["alice"] = Quarantine(1, until=1e18)
    service.journal.apply([service.offsets.record(  # type: ignore[attr-defined]
        "feedback", 0, "alice", erasure("alice", 1e12))])
    feedback(service, "bob", 1)

    erase = service.store.erase

    def store_down(*_args: object) -> None:
        raise OSError("store down")

    service.store.erase = store_down  # type: ignore[method-assign,assignment]
    service.step()
    assert service.journal.erasures_to_apply() == [("alice", 1e12)], "retried next step"
    service.store.erase = erase  # type: ignore[method-assign]
    run_until_idle(service)
    assert service.journal.erasures_to_apply() == []
    assert learner.forgotten[-1] == "alice" and "alice" not in service._quarantine
    assert learner.turns[-1] == "bob" and learner.turns.count("alice") == 1
    assert service.store.versions("alice") == [] and service.store.read_status("alice") is None
    assert [(r.user_id, r.control) for r in announced] == [("alice", True)]
    assert service.metrics.erasures._value.get() == 1
    assert service.store.read_status("bob") is not None


def test_users_of_a_lost_partition_are_forgotten(service: TrainerService) -> None:
    """A rebalance that takes partition 1 away: its rows leave the journal on assignment,
    and the loop drops what it holds of its users before the next pick."""

    class Consumer:
        def __init__(self) -> None:
            self.seeks: list[tuple[str, int, int | None]] = []

        def seek(self, tp: TopicPartition, offset: int) -> None:
            self.seeks.append((tp.topic, tp.partition, offset))

        def seek_to_beginning(self, tp: TopicPartition) -> None:
            self.seeks.append((tp.topic, tp.partition, None))

    learner: FakeLearner = service.learner  # type: ignore[assignment]
    feedback(service, "alice", 0)
    feedback(service, "bob", 1)
    run_until_idle(service)
    consumer = Consumer()
    service.ingest._consumer = consumer  # type: ignore[assignment]
    service.ingest.resume([TopicPartition(t, p) for t in ("generations", "feedback")
                           for p in (0, 2)])
    assert sorted(consumer.seeks) == [("feedback", 0, 1), ("feedback", 2, None),
                                      ("generations", 0, 2), ("generations", 2, None)]
    assert service.ingest.assigned == frozenset({0, 2})
    feedback(service, "alice", 0)
    run_until_idle(service)
    assert learner.forgotten == ["bob"] and learner.turns[-1] == "alice"
    assert service.journal.feedback_ids() == ["alice-f0", "alice-f1"]
