"""Per-user PPO on the tiny random Llama: the reward really moves, only the user's weights
move, the stop rules hold, and the adapter pool keeps, evicts and reloads users exactly.

The synthetic reward is the fraction of vowels in a completion. The random model's
next-token distribution is nearly uniform, so the tests sample at a low temperature
(0.2): it sharpens the policy the way a pretrained model's is sharp, which lets a few
dozen PPO iterations move the reward clearly.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from trainer.ppo.policies import PolicyPool, base_dtype
from trainer.ppo.rollout import response_mask, sample_rollout
from trainer.ppo.trainer import PPOConfig, PPOTrainer, policy_forward

PROMPTS = [
    [{"role": "user", "content": text}]
    for text in ("hello", "how are you?", "tell me a story", "capital of France?", "bye",
                 "what is 2+2?")
]
FAST = PPOConfig(lr=3e-3, batch_size=4, mini_batch_size=2, ppo_epochs=1, max_new_tokens=4,
                 temperature=0.2, kl_coef=0.01, seed=0, dtype="float32")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny matrices: a second OpenMP thread only contends for the shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def vowel_reward(prompts: list[str], completions: list[str]) -> torch.Tensor:
    return torch.tensor([sum(ch in "aeiou" for ch in c) / max(len(c), 1) for c in completions])


def make_pool(model_dir: Path, config: PPOConfig = FAST, **kwargs: Any) -> PolicyPool:
    return PolicyPool.from_pretrained(model_dir, config, **kwargs)


def base_weights(pool: PolicyPool) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in pool.model.named_parameters() if "lora_" not in n}


def adapter_weights(pool: PolicyPool, user_id: str) -> dict[str, torch.Tensor]:
    """The user's LoRA weights and value head, keyed independently of the adapter's name."""
    name = pool.user(user_id).adapter_name
    weights = {n.replace(f".{name}.", "."): p.detach().clone()
               for n, p in pool.adapter_parameters(user_id).items()}
    for n, p in pool.user(user_id).value_head.state_dict().items():
        weights[f"value_head.{n}"] = p.clone()
    return weights


@torch.no_grad()
def randomize(pool: PolicyPool, user_id: str, seed: int) -> None:
    """Give a resident user non-trivial weights (a fresh adapter's lora_B is all zeros)."""
    g = torch.Generator().manual_seed(seed)
    for p in pool.trainable_parameters(user_id):
        p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    changed = [n for n in a if not torch.equal(a[n], b[n])]
    assert not changed, f"changed: {changed[:5]}"


# --- rollouts ------------------------------------------------------------------------------


def test_response_mask_ends_after_the_first_eos() -> None:
    ids = torch.tensor([[5, 6, 1, 7, 1], [1, 4, 4, 4, 4], [5, 5, 5, 5, 5], [5, 9, 5, 5, 5]])
    expected = [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert response_mask(ids, eos_ids=[1, 9]).tolist() == expected


def test_batched_left_padded_logprobs_match_one_sequence_at_a_time(tiny_model_dir: Path) -> None:
    config = dataclasses.replace(FAST, temperature=1.0, max_new_tokens=6)
    pool = make_pool(tiny_model_dir, config)
    trainer = PPOTrainer(pool, config)
    pool.activate("alice")
    randomize(pool, "alice", seed=1)
    rollout = sample_rollout(pool.model, pool.tokenizer, PROMPTS[:4], trainer.generation, 0)
    assert rollout.query_mask[:, 0].sum() < 4, "prompts of different lengths are left-padded"
    assert len(rollout.completions) == 4
    with torch.no_grad():
        batched = policy_forward(pool.model, pool.user("alice").value_head, rollout, 1.0)
        for i in range(4):
            prompt = rollout.query_ids[i][rollout.query_mask[i].bool()]
            response = rollout.response_ids[i][rollout.response_mask[i].bool()]
            logits = pool.model(input_ids=torch.cat([prompt, response])[None]).logits[0]
            logp = torch.log_softmax(logits[len(prompt) - 1 : -1], -1)
            expected = logp.gather(1, response[:, None]).squeeze(1)
            assert torch.allclose(batched.logprobs[i, : len(response)], expected, atol=1e-4)


# --- training ------------------------------------------------------------------------------


def test_ppo_raises_the_reward_and_moves_only_that_users_weights(tiny_model_dir: Path) -> None:
    config = dataclasses.replace(FAST, batch_size=16, mini_batch_size=8, ppo_epochs=2,
                                 max_new_tokens=8, max_resident_users=2, seed=1)
    pool = make_pool(tiny_model_dir, config)
    trainer = PPOTrainer(pool, config)
    pool.activate("bob")
    randomize(pool, "bob", seed=2)
    pool.activate("alice")
    base_before, bob_before = base_weights(pool), adapter_weights(pool, "bob")
    alice_before = adapter_weights(pool, "alice")

    result = trainer.train_user("alice", PROMPTS, vowel_reward, steps=30)

    scores = [m.score for m in result.history]
    first, last = sum(scores[:5]) / 5, sum(scores[-5:]) / 5
    assert last > first + 0.1, f"reward did not rise: {first:.3f} -> {last:.3f}"
    assert (result.steps, result.total_steps, result.stopped_reason) == (30, 30, "budget")
    assert result.reward_before == scores[0] and result.reward_after == scores[-1]
    for m in result.history:
        assert all(math.isfinite(v) for v in dataclasses.astuple(m))
    assert_same(base_weights(pool), base_before)  # the base model is bit-identical
    assert_same(adapter_weights(pool, "bob"), bob_before)  # the other user is untouched
    alice_after = adapter_weights(pool, "alice")
    moved = {n for n in alice_after if not torch.equal(alice_after[n], alice_before[n])}
    assert {"value_head.weight", "value_head.bias"} <= moved
    assert any("lora_B" in n for n in moved) and any("lora_A" in n for n in moved)


def test_rloo_raises_the_reward_without_training_the_value_head(tiny_model_dir: Path) -> None:
    config = dataclasses.replace(FAST, batch_size=16, mini_batch_size=8, ppo_epochs=2,
                                 max_new_tokens=8, seed=1, advantage="rloo",
                                 samples_per_prompt=4)
    pool = make_pool(tiny_model_dir, config)
    trainer = PPOTrainer(pool, config)
    seen: list[list[str]] = []

    def reward(prompts: list[str], completions: list[str]) -> torch.Tensor:
        seen.append(prompts)
        return vowel_reward(prompts, completions)

    pool.activate("alice")
    before = adapter_weights(pool, "alice")
    result = trainer.train_user("alice", PROMPTS, reward, steps=30)

    scores = [m.score for m in result.history]
    first, last = sum(scores[:5]) / 5, sum(scores[-5:]) / 5
    assert last > first + 0.1, f"reward did not rise: {first:.3f} -> {last:.3f}"
    # each rollout: 4 prompts, 4 consecutive samples of each
    assert all(len(set(p[i : i + 4])) == 1 for p in seen for i in range(0, 16, 4))
    assert all(len(set(p)) == 4 for p in seen)
    after = adapter_weights(pool, "alice")
    moved = {n for n in after if not torch.equal(after[n], before[n])}
    assert not moved & {"value_head.weight", "value_head.bias"}
    assert any("lora_B" in n for n in moved) and any("lora_A" in n for n in moved)
    assert all(m.v_loss == 0.0 for m in result.history)


@pytest.mark.parametrize(("changes", "message"), [
    ({"advantage": "rloo"}, "samples_per_prompt >= 2"),
    ({"samples_per_prompt": 3}, "must divide batch_size"),
    ({"advantage": "vtrace"}, "'gae' or 'rloo'"),
])
def test_advantage_settings_are_checked(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(FAST, **changes)


def test_stop_at_reward_threshold(tiny_model_dir: Path) -> None:
    config = dataclasses.replace(FAST, reward_threshold=0.25)
    trainer = PPOTrainer(make_pool(tiny_model_dir, config), config)
    calls: list[int] = []

    def rising_reward(prompts: list[str], completions: list[str]) -> torch.Tensor:
        calls.append(1)
        return torch.full((len(completions),), 0.1 * (len(calls) - 1))  # 0, 0.1, 0.2, 0.3

    result = trainer.train_user("carol", PROMPTS, rising_reward, steps=10)
    assert (result.steps, result.stopped_reason) == (3, "threshold")
    assert result.reward_before == 0.0 and result.reward_after == pytest.approx(0.3)
    assert trainer.progress("carol").steps == 3
    # already above the threshold: one rollout to check, no update
    again = trainer.train_user("carol", PROMPTS, rising_reward, steps=10)
    assert (again.steps, again.total_steps, again.stopped_reason) == (0, 3, "threshold")


def test_stop_at_max_steps_across_budgeted_calls(tiny_model_dir: Path) -> None:
    config = dataclasses.replace(FAST, max_steps=5)
    trainer = PPOTrainer(make_pool(tiny_model_dir, config), config)
    runs = [trainer.train_user("dave", PROMPTS, vowel_reward, steps=2) for _ in range(4)]
    outcomes = [(r.steps, r.total_steps, r.stopped_reason) for r in runs]
    assert outcomes == [(2, 2, "budget"), (2, 4, "budget"), (1, 5, "max_steps"),
                        (0, 5, "max_steps")]
    assert math.isnan(runs[-1].reward_before)
    assert [m.step for r in runs for m in r.history] == [0, 1, 2, 3, 4]


def test_a_users_first_iterations_step_at_the_start_rate(tiny_model_dir: Path) -> None:
    config = dataclasses.replace(FAST, lr=1e-3, lr_start=5e-3, lr_start_steps=3)
    trainer = PPOTrainer(make_pool(tiny_model_dir, config), config)
    runs = [trainer.train_user(user, PROMPTS, vowel_reward, steps=2)
            for user in ("erin", "erin", "frank")]
    rates = [[m.lr for m in r.history] for r in runs]
    # counted per user across turns: erin's second turn crosses over, frank starts afresh
    assert rates == [[5e-3, 5e-3], [5e-3, 1e-3], [5e-3, 5e-3]]
    # ... and the optimiser steps at it: a fresh LoRA's B starts at zero and AdamW's
    # first steps move each weight by about the learning rate
    plain = PPOTrainer(trainer.pool, dataclasses.replace(config, lr_start=None))
    plain.train_user("gina", PROMPTS, vowel_reward, steps=1)
    trainer.train_user("hank", PROMPTS, vowel_reward, steps=1)
    moved = {user: max(w.abs().max().item() for n, w in adapter_weights(trainer.pool, user)
                       .items() if "lora_B" in n) for user in ("gina", "hank")}
    assert moved["gina"] < 2.5e-3 < 4e-3 < moved["hank"], moved
    with pytest.raises(ValueError, match="lr_start must be > 0"):
        dataclasses.replace(FAST, lr_start=0.0)


def test_bfloat16_base_trains_float32_adapters(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A bf16 base model (the "auto" choice on CPUs with native bf16): the user's LoRA and
    value head stay float32 through training, export and reload; the base is untouched."""
    config = dataclasses.replace(FAST, dtype="bfloat16")
    pool = make_pool(tiny_model_dir, config, adapter_source=lambda u: tmp_path / u
                     if (tmp_path / u).exists() else None)
    trainer = PPOTrainer(pool, config)
    pool.activate("fay")
    base_before, before = base_weights(pool), adapter_weights(pool, "fay")
    assert {p.dtype for p in base_before.values()} == {torch.bfloat16}

    result = trainer.train_user("fay", PROMPTS, vowel_reward, steps=2)

    assert result.steps == 2 and all(math.isfinite(m.pg_loss) for m in result.history)
    after = adapter_weights(pool, "fay")
    assert {p.dtype for p in after.values()} == {torch.float32}
    assert any(not torch.equal(after[n], before[n]) for n in after if "lora_B" in n)
    assert_same(base_weights(pool), base_before)
    pool.export_adapter("fay", tmp_path / "fay")
    saved = load_file(tmp_path / "fay" / "adapter_model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.float32}
    pool.evict("fay")
    pool.activate("fay")  # reloaded from the export, exactly
    assert_same(adapter_weights(pool, "fay"), after)


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16),
                                                  (False, torch.float32)])
def test_auto_dtype_is_bfloat16_only_where_the_cpu_computes_it(
        monkeypatch: pytest.MonkeyPatch, native: bool, expected: torch.dtype) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert base_dtype("auto", torch.device("cpu")) == expected
    assert base_dtype("float32", torch.device("cpu")) == torch.float32
    with pytest.raises(ValueError, match="dtype"):
        PPOConfig(dtype="float33")


# --- the adapter pool ----------------------------------------------------------------------


def test_lru_eviction_and_exact_reload(tiny_model_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "adapters"
    pool: PolicyPool

    def save(user_id: str) -> None:
        pool.export_adapter(user_id, store / user_id)

    def find(user_id: str) -> Path | None:
        return store / user_id if (store / user_id).exists() else None

    config = dataclasses.replace(FAST, max_resident_users=2)
    pool = make_pool(tiny_model_dir, config, adapter_source=find, on_evict=save)
    trainer = PPOTrainer(pool, config)
    snapshots = {}
    for seed, user in enumerate(("ann", "ben", "cat")):
        pool.activate(user)
        randomize(pool, user, seed)
        snapshots[user] = adapter_weights(pool, user)
        assert len(pool.resident_users()) <= 2
    assert pool.resident_users() == ["ben", "cat"]
    assert find("ann") is not None and find("ben") is None

    trainer.train_user("ann", PROMPTS, vowel_reward, steps=1)  # reloads ann, evicts ben
    assert pool.resident_users() == ["cat", "ann"]
    pool.activate("ben")
    assert_same(adapter_weights(pool, "ben"), snapshots["ben"])
    assert pool.resident_users() == ["ann", "ben"]
    pool.activate("cat")  # evicts ann, trained since its reload
    pool.activate("ann")
    ann = adapter_weights(pool, "ann")
    assert any(not torch.equal(ann[n], snapshots["ann"][n]) for n in ann)
    assert len(pool.model.peft_config) == 2  # adapters really left the model


def test_exported_adapter_is_plain_peft(tiny_model_dir: Path, tmp_path: Path) -> None:
    pool = make_pool(tiny_model_dir)
    pool.activate("eve")
    randomize(pool, "eve", seed=3)
    out = pool.export_adapter("eve", tmp_path / "eve" / "v1")
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "value_head.safetensors"]
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["r"] == 8 and adapter_config["lora_alpha"] == 16
    assert sorted(adapter_config["target_modules"]) == ["q_proj", "v_proj"]
    assert load_file(out / "value_head.safetensors")["weight"].shape == (1, pool.hidden_size)

    fresh = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert torch.allclose(fresh(input_ids=ids).logits, pool.model(input_ids=ids).logits,
                              atol=1e-5)
        with pool.model.disable_adapter():
            base_logits = pool.model(input_ids=ids).logits
        assert not torch.allclose(fresh(input_ids=ids).logits, base_logits, atol=1e-3)


def test_forgetting_users_even_the_active_and_last_one(tiny_model_dir: Path) -> None:
    """An erased user's adapter, value head, optimiser and progress go, also when it is
    the active adapter or the only one; training another user goes on."""
    pool = make_pool(tiny_model_dir)
    trainer = PPOTrainer(pool, FAST)
    trainer.train_user("ann", PROMPTS, vowel_reward, steps=1)
    trainer.train_user("ben", PROMPTS, vowel_reward, steps=1)
    trainer.forget("ben")  # the active one
    assert pool.resident_users() == ["ann"] and trainer.progress("ben").steps == 0
    trainer.forget("ann")  # the last one
    assert pool.resident_users() == [] and len(pool.model.peft_config) == 0
    assert trainer.progress("ann").steps == 0
    run = trainer.train_user("cat", PROMPTS, vowel_reward, steps=1)
    assert run.steps == 1 and pool.resident_users() == ["cat"]
