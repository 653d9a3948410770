"""The personal reward model: its maths against plain loops, then the real MiniLM backbone.

Two synthetic users rate the same (prompt, short answer, detailed answer) triples with
opposite preferences: "brief" prefers the short answer, "verbose" the detailed one. The
shared model, trained on both, cannot please both; each personal head must.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from trainer.reward.encoder import TextEncoder
from trainer.reward.losses import pairwise_accuracy_from_rewards
from trainer.reward.model import (
    PairExample,
    PersonalRewardModel,
    RewardModelConfig,
    ThumbExample,
    TrainMetrics,
    pairwise_loss,
    split_heldout,
    thumbs_loss,
)
from trainer.reward.users import UserHeadPool

# --- pure maths against plain Python loops ------------------------------------------------


def _log_sigmoid(x: float) -> float:
    return -math.log(1.0 + math.exp(-x))


@pytest.mark.parametrize("with_weight", [True, False])
def test_pairwise_loss_is_bradley_terry(with_weight: bool) -> None:
    g = torch.Generator().manual_seed(0)
    r_chosen, r_rejected = torch.randn(7, generator=g) * 3, torch.randn(7, generator=g) * 3
    weight = torch.rand(7, generator=g) * 2 if with_weight else None
    w = weight.tolist() if weight is not None else [1.0] * 7
    expected = sum(wi * -_log_sigmoid(c - r) for wi, c, r
                   in zip(w, r_chosen.tolist(), r_rejected.tolist(), strict=True)) / 7
    assert pairwise_loss(r_chosen, r_rejected, weight).item() == pytest.approx(expected, rel=1e-5)


def test_pairwise_loss_is_finite_for_huge_margins() -> None:
    loss = pairwise_loss(torch.tensor([-200.0, 200.0]), torch.tensor([200.0, -200.0]))
    assert loss.item() == pytest.approx(200.0, rel=1e-5)


def test_thumbs_loss_is_binary_cross_entropy() -> None:
    g = torch.Generator().manual_seed(1)
    r, weight = torch.randn(9, generator=g) * 2, torch.rand(9, generator=g)
    label = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0])
    expected = 0.0
    for ri, yi, wi in zip(r.tolist(), label.tolist(), weight.tolist(), strict=True):
        p = 1.0 / (1.0 + math.exp(-ri))
        expected += wi * -(yi * math.log(p) + (1 - yi) * math.log(1 - p))
    assert thumbs_loss(r, label, weight).item() == pytest.approx(expected / 9, rel=1e-5)


def test_pairwise_accuracy_counts_ties_as_half() -> None:
    acc = pairwise_accuracy_from_rewards(torch.tensor([2.0, 0.0, 1.0, 5.0]),
                                         torch.tensor([1.0, 0.0, 3.0, 4.0]))
    assert acc == pytest.approx((1 + 0.5 + 0 + 1) / 4)


def test_split_heldout_is_deterministic_and_stable_as_data_grows() -> None:
    pairs = [PairExample("u", f"p{i}", "a", "b") for i in range(200)]
    train, held = split_heldout(pairs, 0.25, seed=3)
    assert (train, held) == split_heldout(list(pairs), 0.25, seed=3)
    assert 25 <= len(held) <= 75 and len(train) + len(held) == 200
    _, held_grown = split_heldout(pairs + [PairExample("u", f"q{i}", "a", "b") for i in range(50)],
                                  0.25, seed=3)
    assert set(held) <= set(held_grown)  # nothing trained on before is held out later
    assert split_heldout(pairs, 0.25, seed=4)[1] != held
    assert split_heldout(pairs, 0.0, seed=3) == (pairs, [])


# --- synthetic users with opposite preferences --------------------------------------------

CORE = {
    "How do I boil an egg?": "Boil it for about eight minutes.",
    "What is photosynthesis?": "Plants turning light into sugar.",
    "How can I improve my sleep?": "Keep a regular bedtime.",
    "Explain how bicycle gears work.": "They change how far you go per pedal turn.",
    "What is a prime number?": "A number divisible only by 1 and itself.",
    "How do I make a cup of tea?": "Steep a tea bag in hot water.",
    "Why is the sky blue?": "Air scatters blue light the most.",
    "How do vaccines work?": "They train your immune system.",
    "What is inflation?": "Prices rising over time.",
    "How do I start running?": "Start slow, a few times a week.",
}
SHORT_FORMS = ("{core}", "Short answer: {core}", "{core} That's it.")
DETAILS = (
    "Let me walk you through it step by step so nothing is missed.",
    "First, it helps to understand the background and why this matters in practice.",
    "For example, many people find it easier once they see a concrete case worked out.",
    "A common mistake is to rush, so take your time and check each step carefully.",
    "There are also a few edge cases worth knowing about, which I explain below.",
    "Second, consider how the details change depending on your situation and goals.",
    "If you want to go deeper, there are good books and courses on this topic.",
    "In summary, the key idea is simple, but the details make a real difference.",
)
DATA_SEED = 38  # chosen so both users hold out the same number of pairs (see below)
CONFIG = RewardModelConfig(heldout_fraction=0.25, user_min_examples=8, seed=0)


def make_triples(n: int, seed: int) -> list[tuple[str, str, str]]:
    """(prompt, short answer, detailed answer) triples with varied wording."""
    rng = random.Random(seed)
    triples = []
    for _ in range(n):
        prompt = rng.choice(list(CORE))
        short = rng.choice(SHORT_FORMS).format(core=CORE[prompt])
        detailed = " ".join([CORE[prompt], *rng.sample(DETAILS, rng.randint(3, 5))])
        triples.append((prompt, short, detailed))
    return triples


def make_user(user_id: str, prefers_short: bool, triples: list[tuple[str, str, str]],
              thumb_triples: list[tuple[str, str, str]]
              ) -> tuple[list[PairExample], list[ThumbExample]]:
    """The user's pairs (preferred first) and thumbs (alternately on short and detailed)."""
    pairs = [PairExample(user_id, p, *((s, d) if prefers_short else (d, s)))
             for p, s, d in triples]
    thumbs = [ThumbExample(user_id, p, s if i % 2 == 0 else d, float((i % 2 == 0) == prefers_short))
              for i, (p, s, d) in enumerate(thumb_triples)]
    return pairs, thumbs


@dataclass(frozen=True)
class Trained:
    """The module's trained model and what the test needs to know about its training."""

    model: PersonalRewardModel
    data: dict[str, tuple[list[PairExample], list[ThumbExample]]]
    metrics: dict[str, TrainMetrics]
    shared_after_shared: dict[str, torch.Tensor]
    brief_after_brief: dict[str, torch.Tensor]


def _clone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def trained() -> Trained:
    torch.set_num_threads(2)
    triples, thumb_triples = make_triples(48, DATA_SEED), make_triples(8, DATA_SEED + 100)
    data = {"brief": make_user("brief", True, triples, thumb_triples),
            "verbose": make_user("verbose", False, triples, thumb_triples)}
    model = PersonalRewardModel(CONFIG)
    metrics = {"shared": model.train_shared(data["brief"][0] + data["verbose"][0],
                                            data["brief"][1] + data["verbose"][1])}
    shared_after_shared = _clone(model.shared_head.state_dict())
    metrics["brief"] = model.train_user("brief", *data["brief"])
    brief_after_brief = model.users.state_dict("brief")
    metrics["verbose"] = model.train_user("verbose", *data["verbose"])
    return Trained(model, data, metrics, shared_after_shared, brief_after_brief)


def _encoder_copy(base: TextEncoder) -> TextEncoder:
    """An encoder with a copy of ``base``'s backbone weights and settings, and an empty cache."""
    return TextEncoder(copy.deepcopy(base.backbone), base.tokenizer, max_length=base.max_length,
                       pooling=base.pooling, normalize=base.normalize,
                       batch_size=base.batch_size, cache_size=base.cache_size)


def _heldout(trained: Trained, user_id: str) -> list[PairExample]:
    return split_heldout(trained.data[user_id][0], CONFIG.heldout_fraction, CONFIG.seed)[1]


def test_data_is_balanced_between_the_two_users(trained: Trained) -> None:
    # (Nearly) equal held-out counts give the shared model as many "short" as "detailed"
    # training pairs, so it cannot simply side with the user who has more data.
    n_brief, n_verbose = len(_heldout(trained, "brief")), len(_heldout(trained, "verbose"))
    assert abs(n_brief - n_verbose) <= 1 and min(n_brief, n_verbose) >= 10


@pytest.mark.parametrize("user_id", ["brief", "verbose"])
def test_personal_head_beats_shared_model_on_heldout_pairs(trained: Trained, user_id: str) -> None:
    model, held = trained.model, _heldout(trained, user_id)
    personal = model.pairwise_accuracy(user_id, held, personal=True)
    shared = model.pairwise_accuracy(user_id, held, personal=False)
    assert personal >= 0.8
    assert personal - shared >= 0.25
    metrics = trained.metrics[user_id]
    assert metrics.personal and metrics.steps > 0
    assert (metrics.heldout_accuracy, metrics.heldout_accuracy_shared) == (personal, shared)


def test_training_moves_only_the_trained_users_head(trained: Trained) -> None:
    model = trained.model
    for user_id in ("brief", "verbose"):
        assert model.users.state_dict(user_id)["weight"].norm() > 0.1  # moved from zero
    assert _equal(model.users.state_dict("brief"), trained.brief_after_brief)
    assert _equal(_clone(model.shared_head.state_dict()), trained.shared_after_shared)
    assert trained.shared_after_shared["weight"].norm() > 0  # the shared head trained too
    prompt, short, detailed = make_triples(1, 999)[0]
    brief = model.score("brief", [prompt, prompt], [short, detailed])
    verbose = model.score("verbose", [prompt, prompt], [short, detailed])
    assert brief[0] > brief[1] and verbose[1] > verbose[0]


def test_user_head_round_trips_through_safetensors(trained: Trained, tmp_path: Path) -> None:
    model = trained.model
    prompts, completions = list(CORE), [f"Answer number {i}." for i in range(len(CORE))]
    before = model.score("verbose", prompts, completions)
    shared_file = model.save_shared(tmp_path / "shared.safetensors")
    user_file = model.save_user("verbose", tmp_path / "verbose.safetensors")
    assert user_file.stat().st_size < 4096
    # Evicted and reloaded in the same model.
    model.users.evict("verbose")
    assert not model.uses_personal("verbose")
    model.load_user("verbose", user_file)
    assert torch.equal(model.score("verbose", prompts, completions), before)
    # A fresh model (same backbone weights) from the two files scores identically.
    fresh = PersonalRewardModel(CONFIG, encoder=_encoder_copy(model.encoder))
    fresh.load_shared(shared_file)
    fresh.load_user("verbose", user_file)
    assert torch.equal(fresh.score("verbose", prompts, completions), before)
    with pytest.raises(ValueError, match="another user"):
        fresh.load_user("brief", user_file)


def test_users_with_little_or_no_data_get_exactly_the_shared_score(trained: Trained) -> None:
    model = trained.model
    prompts, completions = ["What is inflation?"] * 2, ["Prices rise.", "Money loses value."]
    with torch.no_grad():  # the shared head alone
        shared = model.shared_head(model.head_inputs(prompts, completions)).squeeze(-1)
    few = trained.data["brief"][0][:3]
    newbie = [PairExample("newbie", p.prompt, p.chosen, p.rejected) for p in few]
    metrics = model.train_user("newbie", newbie)
    assert (metrics.steps, metrics.personal) == (0, False)
    assert torch.equal(model.score("newbie", prompts, completions), shared)
    assert torch.equal(model.score("never-seen", prompts, completions), shared)
    assert not torch.equal(model.score("brief", prompts, completions), shared)
    # A loaded head trained on too few examples is not used either.
    state = model.users.state_dict("brief")
    state["n_examples"] = torch.tensor(CONFIG.user_min_examples - 1)
    model.users.load_state_dict("sparse", state)
    assert torch.equal(model.score("sparse", prompts, completions), shared)


def test_train_user_refuses_another_users_examples(trained: Trained) -> None:
    with pytest.raises(ValueError, match="example of user 'brief'"):
        trained.model.train_user("verbose", trained.data["brief"][0])


def test_backbone_tuning_moves_the_backbone_and_clears_the_cache(trained: Trained) -> None:
    encoder = _encoder_copy(trained.model.encoder)
    cfg = RewardModelConfig(backbone_lr=1e-4, shared_epochs=1, batch_size=4, heldout_fraction=0.0)
    model = PersonalRewardModel(cfg, encoder=encoder)
    # From a trained head: a zero head passes no gradient to the backbone on the first step.
    model.shared_head.load_state_dict(trained.model.shared_head.state_dict())
    pairs = trained.data["brief"][0][:4]
    model.score("anyone", [pairs[0].prompt], [pairs[0].chosen])
    assert encoder.cached_entries() == 1
    before = next(encoder.backbone.parameters()).detach().clone()
    metrics = model.train_shared(pairs)
    assert metrics.steps == 1 and encoder.cached_entries() == 0
    assert not torch.equal(next(encoder.backbone.parameters()), before)
    assert not any(p.requires_grad for p in encoder.backbone.parameters())


def test_user_pool_evicts_least_recently_used_and_reloads(tmp_path: Path) -> None:
    saved: list[str] = []
    pool: UserHeadPool

    def on_evict(user_id: str) -> None:
        pool.save(user_id, tmp_path / f"{user_id}.safetensors")
        saved.append(user_id)

    def source(user_id: str) -> Path | None:
        path = tmp_path / f"{user_id}.safetensors"
        return path if path.exists() else None

    pool = UserHeadPool(4, "cpu", max_resident=2, user_source=source, on_evict=on_evict)
    for i, user_id in enumerate(("a", "b", "c")):
        head = pool.get_or_create(user_id)
        head.weight.data.fill_(float(i + 1))
    assert saved == ["a"] and pool.resident_users() == ["b", "c"]
    reloaded = pool.get("a")  # from its file; evicts "b"
    assert reloaded is not None and torch.equal(reloaded.weight.data, torch.full((4,), 1.0))
    assert pool.resident_users() == ["c", "a"] and saved == ["a", "b"]
    bad = pool.state_dict("a") | {"weight": torch.tensor([1.0, float("nan"), 0.0, 0.0])}
    with pytest.raises(ValueError, match="non-finite"):
        pool.load_state_dict("a", bad)
