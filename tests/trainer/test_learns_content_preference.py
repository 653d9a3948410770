"""Learning through the real gate, on the tiny model: a user who prefers answers with
concrete figures (the ``examples`` family of the demo's preference library, a content
preference: its score counts example markers and numbers) ranks the base model's
answers; the learner's turns (reward model from the rankings, PPO, the publish gate
judged by the held-out judge head) publish an adapter whose answers score higher under
that preference than the base model's on prompts no part of the training ever saw."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from demo.preferences import PREFERENCES
from services.contract.records import GenerationRecord
from services.contract.store import AdapterStore
from trainer.config import PublishConfig, ScheduleConfig, TrainerConfig
from trainer.data.examples import build_examples
from trainer.data.preferences import FeedbackEvent, PreferenceConfig
from trainer.ingest.journal import Joined
from trainer.loop.learner import Learner
from trainer.metrics import TrainerMetrics
from trainer.ppo.config import PPOConfig
from trainer.ppo.policies import PolicyPool
from trainer.ppo.rollout import generation_config, sample_rollout
from trainer.reward.config import RewardModelConfig
from trainer.reward.data import heldout_prompts

USER = "figures-fan"
PREFERENCE = PREFERENCES["examples"]
HELDOUT, SEED = 0.25, 0
TOPICS = ("apples", "rain", "trains", "stars", "bread", "rivers", "cats", "music", "tea",
          "clocks", "boats", "snow", "roads", "bees", "paper", "lamps")
PROMPTS = [f"tell me about {t}" for t in TOPICS]
PPO = PPOConfig(batch_size=16, mini_batch_size=8, ppo_epochs=2, max_new_tokens=8, lr=1e-2,
                temperature=0.7, kl_coef=0.01, seed=0)


def chat(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def sample(pool: PolicyPool, prompts: list[str], n: int, seed: int,
           adapter: bool = False) -> list[list[str]]:
    """``n`` completions per prompt from the user's adapter, or from the base model."""
    gen = generation_config(pool.tokenizer, [pool.tokenizer.eos_token_id], PPO.max_new_tokens,
                            PPO.temperature, 1.0)
    batch = [chat(p) for p in prompts for _ in range(n)]
    if adapter:
        pool.activate(USER)
        texts = sample_rollout(pool.model, pool.tokenizer, batch, gen, seed).completions
    else:
        with pool.model.disable_adapter():
            texts = sample_rollout(pool.model, pool.tokenizer, batch, gen, seed).completions
    return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]


def rankings(pool: PolicyPool, rounds: int) -> list[Joined]:
    """The user's rankings of the base model's answers, best first by the preference.
    Like a person asked to rank only what they can tell apart, the user ranks the
    candidates whose scores differ and skips a prompt whose candidates all tie."""
    out = []
    for r in range(rounds):
        for i, (prompt, texts) in enumerate(zip(PROMPTS, sample(pool, PROMPTS, 3, seed=r),
                                                strict=True)):
            best = {}  # one candidate per distinct score
            for c, text in enumerate(texts):
                best.setdefault(PREFERENCE.score(prompt, text), c)
            if len(best) < 2:
                continue
            group = f"g{r}-{i}"
            gens = {f"{group}-{c}": GenerationRecord(
                response_id=f"{group}-{c}", group_id=group, user_id=USER, candidate_index=c,
                num_candidates=3, messages=chat(prompt), prompt_token_ids=[1],
                completion=text, completion_token_ids=[2], finish_reason="length",
                adapter_version="", base_model="tiny", sampling={}, created_at=1.0)
                for c, text in enumerate(texts)}
            order = [best[s] for s in sorted(best, reverse=True)]
            event = FeedbackEvent(f"f{group}", USER, USER, group, "ranking",
                                  tuple(f"{group}-{c}" for c in order), None, 1.0)
            out.append(Joined(len(out) + 1, event, gens))
    return out


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("content")
    cfg = TrainerConfig(
        adapter_store=str(tmp / "store"), state_dir=str(tmp / "state"),
        policy_model=str(tiny_model_dir), policy_model_id="tiny",
        schedule=ScheduleConfig(ppo_steps_per_turn=8, min_pairs=2), ppo=PPO,
        reward=RewardModelConfig(heldout_fraction=HELDOUT, seed=SEED, shared_steps=8),
        # the random model never ends an answer: the truncation and emptiness rules would
        # compare noise; the judge, the KL bound and the repetition rule stay on
        publish=PublishConfig(eval_prompts=4, eval_samples=6, kl_bound=50.0,
                              max_truncated_share=1.0, max_empty_share=1.0))
    store = AdapterStore(cfg.adapter_store)
    learner = Learner(cfg, store, TrainerMetrics(), lambda record: None)
    data_pool = PolicyPool.from_pretrained(tiny_model_dir, PPO)
    data_pool.activate(USER)
    ex = build_examples(USER, rankings(data_pool, rounds=10), PreferenceConfig(), HELDOUT, SEED)
    results = [learner.turn(USER, ex) for _ in range(6)]
    return store, results, ex, tiny_model_dir


def test_the_gate_publishes_and_the_adapter_beats_base_on_unseen_prompts(trained) -> None:  # type: ignore[no-untyped-def]
    store, results, ex, model_dir = trained
    decisions = [r.decision for r in results]
    assert store.latest(USER) is not None, decisions
    published = [r for r in results if r.published_version]
    assert all(r.judge_after > r.judge_before for r in published)
    keys = heldout_prompts(USER, [f"user: {p}" for p in PROMPTS], HELDOUT, SEED)
    held = [p for p in PROMPTS if f"user: {p}" in keys]
    assert held and all(chat(p) in ex.eval_prompts for p in held)
    assert not any(chat(p) in ex.train_prompts for p in held)
    # sample the published adapter and the base model with the same seeds
    latest = store.latest(USER)
    pool = PolicyPool.from_pretrained(model_dir, PPO, adapter_source=lambda _u: (
        store.version_dir(USER, latest)))
    wins = comparisons = 0
    adapter_scores, base_scores = [], []
    for seed in range(4):
        for prompt, mine, base in zip(held, sample(pool, held, 8, seed, adapter=True),
                                      sample(pool, held, 8, seed), strict=True):
            for a, b in zip(mine, base, strict=True):
                sa, sb = PREFERENCE.score(prompt, a), PREFERENCE.score(prompt, b)
                adapter_scores.append(sa)
                base_scores.append(sb)
                if sa != sb:
                    comparisons += 1
                    wins += sa > sb
    mean_adapter = sum(adapter_scores) / len(adapter_scores)
    mean_base = sum(base_scores) / len(base_scores)
    print(f"held-out prompts {len(held)}: preference score {mean_base:.3f} -> "
          f"{mean_adapter:.3f}; wins {wins}/{comparisons} decided comparisons; {decisions}")
    assert mean_adapter >= mean_base + 0.1
    assert comparisons >= 20 and wins / comparisons >= 0.65
