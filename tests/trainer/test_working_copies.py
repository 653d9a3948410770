"""More users than resident adapters: a user evicted with weights ahead of its served
version (a refused candidate) resumes from them at its next load, and its gate baseline
stays the served version; a publish, an erasure or a newer version elsewhere ends the
copy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.contract.store import AdapterStore
from tests.trainer.test_learner_gate import HELDOUT, joined_history
from trainer.config import PublishConfig, ScheduleConfig, TrainerConfig
from trainer.data.examples import build_examples
from trainer.data.preferences import PreferenceConfig
from trainer.loop.learner import Learner
from trainer.metrics import TrainerMetrics
from trainer.ppo.config import PPOConfig
from trainer.ppo.policies import PolicyPool
from trainer.reward.config import RewardModelConfig


def weights(pool: PolicyPool, user_id: str) -> dict[str, torch.Tensor]:
    """The resident user's LoRA weights by load-independent names."""
    marker = f".{pool.user(user_id).adapter_name}."
    return {n.replace(marker, "."): p.detach().clone()
            for n, p in pool.adapter_parameters(user_id).items()}


def test_an_evicted_users_unpublished_weights_are_resumed(tiny_model_dir: Path,
                                                           tmp_path: Path) -> None:
    torch.set_num_threads(1)
    refuse = PublishConfig(eval_prompts=2, eval_samples=1, min_improvement=1e9,
                           max_truncated_share=1.0, max_empty_share=1.0,
                           max_repetitive_share=1.0)
    cfg = TrainerConfig(
        adapter_store=str(tmp_path / "store"), state_dir=str(tmp_path / "state"),
        policy_model=str(tiny_model_dir), policy_model_id="tiny",
        schedule=ScheduleConfig(ppo_steps_per_turn=1, min_pairs=2),
        ppo=PPOConfig(batch_size=4, mini_batch_size=2, max_new_tokens=6, lr=1e-2,
                      temperature=0.5, max_resident_users=1),
        reward=RewardModelConfig(user_min_examples=4, heldout_fraction=HELDOUT,
                                 shared_steps=4),
        publish=refuse)
    store = AdapterStore(cfg.adapter_store)
    learner = Learner(cfg, store, TrainerMetrics(), lambda _record: None)
    ex = {u: build_examples(u, joined_history(u), PreferenceConfig(), HELDOUT)
          for u in ("ann", "ben")}
    copies = Path(cfg.state_dir) / "working-adapters"

    # 1. ann trains and the gate refuses: her weights are ahead of what she is served
    assert learner.turn("ann", ex["ann"]).decision.startswith("kept: candidate judge")
    assert learner._ppo is not None
    pool = learner._ppo.pool
    ahead = weights(pool, "ann")
    assert any(n.endswith("lora_B.weight") and p.abs().sum() > 0 for n, p in ahead.items())

    # 2. ben's turn evicts her (one resident adapter): her weights are kept on disk
    learner.turn("ben", ex["ben"])
    assert pool.resident_users() == ["ben"]
    assert (copies / "ann" / "parent").read_text() == "", "descends from no version"

    # 3. her next load resumes them exactly (and evicts ben, whose copy is kept too)
    pool.activate("ann")
    assert all(torch.equal(p, ahead[n]) for n, p in weights(pool, "ann").items())
    assert (copies / "ben").is_dir()
    # ... and her gate still judges against what she is served: the base model
    assert learner.turn("ann", ex["ann"]).decision.startswith("kept: candidate judge")
    served = learner._served["ann"]
    assert all(p.abs().sum() == 0 for n, p in served.items() if ".lora_B." in n)
    assert learner._ppo.progress("ann").steps == 2, "her progress continued"

    # 4. publishing ends her copy; the next eviction of the published weights keeps none
    learner._cfg = TrainerConfig(**{**cfg.__dict__, "publish": PublishConfig(
        eval_prompts=2, eval_samples=1, min_improvement=-1e9, kl_bound=1e9,
        max_truncated_share=1.0, max_empty_share=1.0, max_repetitive_share=1.0)})
    assert learner.turn("ann", ex["ann"]).published_version == "v1"
    assert not (copies / "ann").exists()
    published = weights(pool, "ann")
    pool.activate("ben")  # evicts ann, unchanged since her publish
    assert not (copies / "ann").exists()
    pool.activate("ann")  # from the store's v1
    assert all(torch.equal(p, published[n]) for n, p in weights(pool, "ann").items())

    # 5. ben's copy outlived his load without a turn; erasing him removes it
    assert (copies / "ben").is_dir()
    learner.forget("ben")
    assert not (copies / "ben").exists()


@pytest.mark.parametrize("latest", ["", "v1"])
def test_a_copy_is_used_only_on_its_own_parent(tmp_path: Path, latest: str) -> None:
    from trainer.loop.working import PARENT_FILE, WorkingCopies

    copies = WorkingCopies(tmp_path)
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / PARENT_FILE).write_text("v1")
    assert (copies.source("ann", latest) is not None) == (latest == "v1")
    assert copies.source("nobody", latest) is None
