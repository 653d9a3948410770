"""The trainer's per-user state stays bounded as users are added: the shared
reward head's example sample and the embedding cache (no model is loaded)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from services.contract.store import AdapterStore
from trainer.config import TrainerConfig
from trainer.data.examples import UserExamples
from trainer.data.preferences import PreferenceData
from trainer.loop.learner import Learner
from trainer.metrics import TrainerMetrics
from trainer.reward.config import RewardModelConfig
from trainer.reward.data import PairExample, ThumbExample, stable_hash
from trainer.reward.encoder import TextEncoder
from trainer.reward.shared_sample import SharedSample


def pairs_of(user: str, n: int, tag: str = "") -> list[PairExample]:
    return [PairExample(user, f"prompt {tag}{i}", f"good {i}", f"bad {i}") for i in range(n)]


def bottom_k(user: str, examples: list[PairExample], k: int, seed: int = 0) -> list[PairExample]:
    """Reference: the k examples with the smallest stable hashes, by a plain sort."""
    def h(e: PairExample) -> int:
        return stable_hash(str(seed), user, "pair", e.prompt, e.chosen, e.rejected)
    return sorted(examples, key=h)[:k]


# --- SharedSample -------------------------------------------------------------------------


def test_sample_keeps_each_users_bottom_k_and_replaces_on_put() -> None:
    sample = SharedSample(max_total=10_000, per_user=50)
    history = pairs_of("u", 400)
    sample.put("u", history)
    pairs, thumbs = sample.examples()
    assert thumbs == [] and len(sample) == 50
    assert set(pairs) == set(bottom_k("u", history, 50))
    # a grown history: still the bottom 50 of it, never more
    grown = history + pairs_of("u", 400, tag="new ")
    sample.put("u", grown)
    assert len(sample) == 50 and set(sample.examples()[0]) == set(bottom_k("u", grown, 50))


def test_sample_total_stays_bounded_as_users_are_added() -> None:
    sample = SharedSample(max_total=300, per_user=20)
    for u in range(1000):
        user = f"user-{u}"
        sample.put(user, pairs_of(user, 25), [ThumbExample(user, "p", "c", 1.0)])
        assert len(sample) <= 300
    pairs, thumbs = sample.examples()
    assert len(pairs) + len(thumbs) == 300 == len(sample)
    assert len(sample.users()) < 1000  # users whose entries were all trimmed cost nothing
    # the population's sample is spread over many users, not the last ones
    assert len({p.user_id for p in pairs}) > 100


def test_sample_matches_a_plain_bottom_k_of_the_population() -> None:
    sample = SharedSample(max_total=37, per_user=5, seed=7)
    union = []
    for u in range(40):
        user = f"u{u}"
        mine = pairs_of(user, 9)
        sample.put(user, mine)
        union += [(stable_hash("7", user, "pair", e.prompt, e.chosen, e.rejected), e)
                  for e in bottom_k(user, mine, 5, seed=7)]
    expected = {e for _, e in sorted(union, key=lambda item: item[0])[:37]}
    assert set(sample.examples()[0]) == expected


def test_sample_refuses_nonsense_bounds() -> None:
    with pytest.raises(ValueError):
        SharedSample(0, 1)
    with pytest.raises(ValueError):
        RewardModelConfig(shared_max_examples=0)


def test_config_warns_when_the_state_cache_cannot_hold_a_shared_step(
        caplog: pytest.LogCaptureFixture) -> None:
    RewardModelConfig()
    assert not caplog.records  # the defaults fit: 4,096 texts >= 2 x 16 examples
    RewardModelConfig(state_cache_size=10, shared_batch_size=16)
    assert "re-encodes" in caplog.text


# --- the learner hands train_shared only the bounded sample --------------------------------


class _Stop(Exception):
    pass


class _RecordingRewardModel:
    """Stands in for the reward model: records what train_shared got, then ends the turn."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def train_shared(self, pairs: list[PairExample], thumbs: list[ThumbExample]) -> None:
        self.sizes.append(len(pairs) + len(thumbs))
        raise _Stop


def user_examples(user: str, n: int) -> UserExamples:
    return UserExamples(PreferenceData((), (), {}), pairs_of(user, n), [], [], [], n, n)


def test_learner_trains_the_shared_head_on_a_bounded_sample(tmp_path: Path) -> None:
    cfg = TrainerConfig(adapter_store=str(tmp_path / "store"), state_dir=str(tmp_path / "state"),
                        reward=RewardModelConfig(shared_max_examples=200,
                                                 shared_max_examples_per_user=16))
    learner = Learner(cfg, AdapterStore(cfg.adapter_store), TrainerMetrics(), lambda r: None)
    rm = _RecordingRewardModel()
    learner._models = lambda: (rm, None)  # type: ignore[method-assign,assignment,return-value]
    for u in range(300):
        with pytest.raises(_Stop):
            learner.turn(f"user-{u}", user_examples(f"user-{u}", 40))
    assert rm.sizes[0] == 16 and max(rm.sizes) == 200 == rm.sizes[-1]
    assert len(learner._shared) == 200


# --- the embedding cache ------------------------------------------------------------------


class _CountingEncoder(TextEncoder):
    """A TextEncoder whose "backbone" is arithmetic: no model, same cache code."""

    def __init__(self, cache_size: int, batch_size: int = 32) -> None:
        backbone = nn.Linear(1, 8)
        backbone.config = SimpleNamespace(hidden_size=8,  # type: ignore[assignment]
                                          num_hidden_layers=1)
        super().__init__(backbone, None, max_length=16, pooling="mean",  # type: ignore[arg-type]
                         normalize=False, batch_size=batch_size, cache_size=cache_size)
        self.encoded = 0

    def encode(self, prompts, completions):  # type: ignore[no-untyped-def,override]
        self.encoded += len(prompts)
        return torch.stack([torch.full((8,), float(len(p) * 1000 + len(c)))
                            for p, c in zip(prompts, completions, strict=True)])


def test_embedding_cache_is_bounded_in_entries_and_bytes() -> None:
    enc = _CountingEncoder(cache_size=50)
    for start in range(0, 1000, 100):  # 1,000 distinct texts in calls of 100
        texts = [f"p{i}" for i in range(start, start + 100)]
        out = enc.embed(texts, ["c"] * 100)
        assert out.shape == (100, 8)
        assert enc.cached_entries() <= 50
    assert enc.cached_entries() == 50
    # each cached row owns its 8 floats; a view would pin its whole 32-row batch
    assert enc.cached_bytes() == 50 * 8 * 4


def test_embedding_cache_is_lru_and_serves_hits_without_encoding() -> None:
    enc = _CountingEncoder(cache_size=3)
    enc.embed(["a", "b", "c"], ["x", "x", "x"])
    enc.embed(["a"], ["x"])  # "a" is now the most recent
    enc.embed(["d"], ["x"])  # evicts "b"
    before = enc.encoded
    hit = enc.embed(["a", "c", "d"], ["x", "x", "x"])
    assert enc.encoded == before and math.isclose(hit[0, 0].item(), 1000 + 1)
    enc.embed(["b"], ["x"])
    assert enc.encoded == before + 1
