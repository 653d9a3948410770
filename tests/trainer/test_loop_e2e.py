"""The loop closes: feedback through the gRPC API -> the real trainer (journal,
preferences, MiniLM reward model, LoRA PPO on the tiny model) -> a published
adapter version -> the server's next response for that user reports it. With no
further feedback the trainer goes on training the user (below its stop rule) and
publishes again; GetUserStatus shows the steps and the training state."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

from personalize.v1 import assistant_pb2 as pb
from tests.services.helpers import generate
from tests.support.trainer_proc import ALWAYS_PUBLISH, start_trainer

PROMPTS = ["tell me about the sea", "name a fruit", "how are you", "say something short"]


def test_feedback_to_served_adapter(stub, server, broker, tiny_model_dir: Path,  # type: ignore[no-untyped-def]
                                    adapter_store_dir: Path, tmp_path: Path) -> None:
    user, other = f"loop-{uuid.uuid4().hex[:6]}", f"still-{uuid.uuid4().hex[:6]}"
    trainer = start_trainer(
        broker.bootstrap, tmp_path / "state", adapter_store_dir, f"loop-{uuid.uuid4().hex[:6]}",
        tmp_path / "trainer.log", policy_model=str(tiny_model_dir),
        policy_model_id=server.engine.model_id,
        **{**ALWAYS_PUBLISH, "schedule_continue_without_feedback": "true",
           "schedule_continue_min_interval_s": "0"})
    try:
        start = time.monotonic()
        for prompt in PROMPTS:
            out = generate(stub, user, prompt, num_candidates=3, max_tokens=8, temperature=1.0)
            ranked = [out.response_ids[i] for i in (2, 0, 1)]
            stub.SubmitFeedback(pb.FeedbackRequest(user_id=user,
                                                   ranking=pb.Ranking(response_ids=ranked)))
        generate(stub, other, "hello", max_tokens=4)
        deadline = time.monotonic() + 300
        status = stub.GetUserStatus(pb.UserStatusRequest(user_id=user))

        def wait_for(done) -> pb.UserStatus:  # type: ignore[no-untyped-def]
            while True:
                status = stub.GetUserStatus(pb.UserStatusRequest(user_id=user))
                if done(status):
                    return status
                assert trainer.poll() is None, (tmp_path / "trainer.log").read_text()[-4000:]
                assert time.monotonic() < deadline, (tmp_path / "trainer.log").read_text()[-4000:]
                time.sleep(1)

        status = wait_for(lambda s: s.adapter_version and s.last_publish_decision)
        served = generate(stub, user, PROMPTS[0], max_tokens=6)
        assert served.finished[0].adapter_version.startswith("v")
        assert generate(stub, other, "hello", max_tokens=4).finished[0].adapter_version == ""
        assert status.feedback_events_trained == len(PROMPTS)
        assert status.preference_pairs == 3 * len(PROMPTS)
        assert status.last_publish_decision.startswith("published v")
        assert status.trainer_updated_at > 0
        manifest = server.store.manifest(user, "v1")
        assert manifest.steps == 2 and manifest.feedback_count == len(PROMPTS)
        print(f"feedback -> served adapter: {time.monotonic() - start:.1f}s")

        # no more feedback: PPO turns go on (below the threshold and the step cap)
        status = wait_for(lambda s: s.adapter_version not in ("", "v1")
                          and s.ppo_steps_total >= 4)  # the report follows the publish
        assert status.training_state == "training" and status.ppo_max_steps == 20_000
        assert not status.HasField("reward_threshold")
        assert status.feedback_events_trained == len(PROMPTS)
        manifest = server.store.manifest(user, "v2")
        assert manifest.parent_version == "v1" and manifest.steps == 4
        assert manifest.feedback_count == len(PROMPTS)
    finally:
        trainer.send_signal(signal.SIGTERM)
        trainer.wait(timeout=60)
