"""A journal whose positions lie past the end of the log (the log was reset, e.g.
an in-memory broker restarted) reads the log again instead of skipping records."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

from personalize.v1 import assistant_pb2 as pb
from tests.services.helpers import generate
from tests.support.trainer_proc import journaled_ids, start_trainer
from trainer.ingest.journal import Consumed, Journal


def test_positions_past_the_end_are_read_again(stub, broker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    state = tmp_path / "state"
    journal = Journal(state / "journal.sqlite", "generations", "feedback")
    far = 10**9
    journal.apply([Consumed(t, p, far, None, b"{}") for t in ("generations", "feedback")
                   for p in range(3)])
    journal.close()
    user = f"reset-{uuid.uuid4().hex[:6]}"
    out = generate(stub, user, max_tokens=3)
    stub.SubmitFeedback(pb.FeedbackRequest(user_id=user, feedback_id="after-reset",
                                           thumbs=pb.Thumbs(response_id=out.response_ids[0],
                                                            up=True)))
    trainer = start_trainer(broker.bootstrap, state, tmp_path / "store",
                            f"reset-{uuid.uuid4().hex[:6]}", tmp_path / "t.log", train="false")
    try:
        deadline = time.monotonic() + 60
        while True:
            ids = journaled_ids(state, [user])
            if ids or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert ids == ["after-reset"], (tmp_path / "t.log").read_text()[-3000:]
        assert "the log was reset" in (tmp_path / "t.log").read_text()
    finally:
        trainer.send_signal(signal.SIGTERM)
        trainer.wait(timeout=30)
