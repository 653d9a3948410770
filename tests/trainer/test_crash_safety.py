"""kill -9 the trainer while it consumes a burst of acknowledged feedback, restart
it, and check every acknowledged event is in the training data exactly once."""

from __future__ import annotations

import random
import threading
import time
import uuid
from pathlib import Path

from personalize.v1 import assistant_pb2 as pb
from tests.services.helpers import generate
from tests.support.trainer_proc import (
    KillableTrainer,
    journaled_ids,
    start_trainer,
    wait_for_ids,
)

EVENTS = 300


def test_kill_9_loses_nothing_and_counts_nothing_twice(stub, broker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    users = [f"crash{i}-{uuid.uuid4().hex[:6]}" for i in range(4)]
    responses = {u: generate(stub, u, num_candidates=3, max_tokens=3).response_ids for u in users}
    acked: list[tuple[str, str]] = []

    def burst() -> None:
        rng = random.Random(7)
        for i in range(EVENTS):
            user = users[i % len(users)]
            ids = responses[user]
            if i % 2:
                request = pb.FeedbackRequest(user_id=user, feedback_id=f"fb-{i}",
                                             thumbs=pb.Thumbs(response_id=ids[i % 3], up=True))
            else:
                order = rng.sample(list(ids.values()), 3)
                request = pb.FeedbackRequest(user_id=user, feedback_id=f"fb-{i}",
                                             ranking=pb.Ranking(response_ids=order))
            ack = stub.SubmitFeedback(request, timeout=30)
            acked.append((user, ack.feedback_id))
            time.sleep(0.03)  # a burst the trainer consumes while it arrives
            if i % 50 == 0:  # a client retry of an acknowledged event
                stub.SubmitFeedback(request, timeout=30)

    state, group = tmp_path / "state", f"crash-{uuid.uuid4().hex[:8]}"
    start = lambda: start_trainer(broker.bootstrap, state, tmp_path / "store", group,  # noqa: E731
                                  tmp_path / "trainer.log", train="false")
    def journaled() -> list[str]:
        return journaled_ids(state, users)

    sender = threading.Thread(target=burst)
    trainer = KillableTrainer(start, journaled, seed=11)
    sender.start()
    while trainer.kills < 3:
        trainer.kill_while_consuming()
    sender.join()
    wanted = {fid for _, fid in acked}
    try:
        got = wait_for_ids(journaled, wanted)
    finally:
        trainer.stop()
    seen_at_kill = trainer.seen_at_kill
    assert len(acked) == EVENTS and trainer.kills >= 3
    assert 0 < seen_at_kill[0] < EVENTS, f"kills must land mid-burst: {seen_at_kill}"
    assert len(got) == len(set(got)), "an event was counted twice"
    assert set(got) == wanted, f"lost {len(wanted - set(got))} acknowledged events"
