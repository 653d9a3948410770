"""The personal reward model: its maths against plain loops, then the real MiniLM backbone.

Two synthetic users rate the same (prompt, formal answer, casual answer) triples with
opposite preferences about manner, not length: "formal" prefers the formal register,
"casual" the casual one (same facts, about as many words). The shared model, trained on
both, cannot please both; each personal head must, and so must each user's judge head,
trained on one half of the user's training prompts.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

from trainer.reward.data import fold_of, heldout_prompts, is_heldout_prompt
from trainer.reward.encoder import TextEncoder
from trainer.reward.losses import pairwise_accuracy_from_rewards
from trainer.reward.model import (
    JUDGE,
    POLICY,
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


def test_split_heldout_keeps_a_rankings_pairs_together() -> None:
    # three pairs per ranking (A > B > C): a held-out A > C never shares a text with training
    pairs = [PairExample("u", f"prompt {i}", c, r) for i in range(60)
             for c, r in (("a", "b"), ("b", "c"), ("a", "c"))]
    train, held = split_heldout(pairs, 0.25, seed=5)
    assert held and {p.prompt for p in train}.isdisjoint({p.prompt for p in held})


def test_folds_split_training_prompts_in_two_disjoint_halves() -> None:
    pairs = [PairExample("u", f"prompt {i}", "a", "b") for i in range(200)]
    folds = [[p for p in pairs if fold_of(p, seed=0) == part] for part in (0, 1)]
    assert 70 <= len(folds[0]) <= 130 and len(folds[0]) + len(folds[1]) == 200
    assert {p.prompt for p in folds[0]}.isdisjoint({p.prompt for p in folds[1]})


# --- synthetic users with opposite preferences about manner --------------------------------

CORE = {
    "How do I boil an egg?": "boil it for about eight minutes, then cool it in cold water.",
    "What is photosynthesis?": "plants turn light, water and air into sugar and oxygen.",
    "How can I improve my sleep?": "keep a regular bedtime and avoid screens late at night.",
    "Explain how bicycle gears work.": "they change how far the wheel turns per pedal turn.",
    "What is a prime number?": "a whole number divisible only by one and by itself.",
    "How do I make a cup of tea?": "steep a tea bag in hot water for three minutes.",
    "Why is the sky blue?": "air molecules scatter blue sunlight more than red light.",
    "How do vaccines work?": "they show your immune system a harmless copy of a germ.",
    "What is inflation?": "the general rise of prices, so money buys less over time.",
    "How do I start running?": "start slowly, a few short runs a week, and build up.",
    "What causes tides?": "the moon's gravity pulls the oceans toward it.",
    "How do I save money?": "set a budget and move some pay to savings every month.",
    "What is a black hole?": "a region where gravity is so strong that light cannot escape.",
    "How do I learn a language?": "practise a little every day and speak with real people.",
    "Why do leaves change colour?": "trees stop making green chlorophyll in the autumn.",
    "How does a fridge stay cold?": "a pump moves heat from inside to the coils at the back.",
}
FORMAL = (("Certainly.", "I trust this is helpful."),
          ("Good question.", "Please let me know should you require further detail."),
          ("Allow me to explain.", "I hope this answers your question."),
          ("With pleasure.", "Kind regards."))
CASUAL = (("Sure thing!", "Hope that helps, cheers!"),
          ("Oh, easy one!", "Give it a go, you got this!"),
          ("Hey, no worries.", "Pretty simple, right?"),
          ("Yeah so basically,", "That's about it, mate.")
          )
DATA_SEED = 7
CONFIG = RewardModelConfig(heldout_fraction=0.25, user_min_examples=6, seed=0)


def make_triples(n: int, seed: int) -> list[tuple[str, str, str]]:
    """(prompt, formal answer, casual answer) triples: the same facts, another manner."""
    rng = random.Random(seed)
    triples = []
    for _ in range(n):
        prompt = rng.choice(list(CORE))
        core = CORE[prompt]
        (f_open, f_close), (c_open, c_close) = rng.choice(FORMAL), rng.choice(CASUAL)
        formal = f"{f_open} In short, {core} {f_close}"
        casual = f"{c_open} {core[0].upper()}{core[1:]} {c_close}"
        triples.append((prompt, formal, casual))
    return triples


def make_user(user_id: str, prefers_formal: bool, triples: list[tuple[str, str, str]],
              thumb_triples: list[tuple[str, str, str]]
              ) -> tuple[list[PairExample], list[ThumbExample]]:
    """The user's pairs (preferred first) and thumbs (alternately on formal and casual)."""
    pairs = [PairExample(user_id, p, *((f, c) if prefers_formal else (c, f)))
             for p, f, c in triples]
    thumbs = [ThumbExample(user_id, p, f if i % 2 == 0 else c,
                           float((i % 2 == 0) == prefers_formal))
              for i, (p, f, c) in enumerate(thumb_triples)]
    return pairs, thumbs


@dataclass(frozen=True)
class Trained:
    """The module's trained model and what the test needs to know about its training."""

    model: PersonalRewardModel
    data: dict[str, tuple[list[PairExample], list[ThumbExample]]]
    metrics: dict[str, TrainMetrics]
    shared_after_shared: dict[str, torch.Tensor]
    formal_after_formal: dict[str, torch.Tensor]


def _clone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def trained() -> Trained:
    torch.set_num_threads(2)
    triples, thumb_triples = make_triples(96, DATA_SEED), make_triples(8, DATA_SEED + 100)
    data = {"formal": make_user("formal", True, triples, thumb_triples),
            "casual": make_user("casual", False, triples, thumb_triples)}
    model = PersonalRewardModel(CONFIG)
    everyone = (data["formal"][0] + data["casual"][0], data["formal"][1] + data["casual"][1])
    metrics = {"shared": model.train_shared(*everyone)}
    # a turn of each user: the shared part (each example with its own user's heads), then
    # the user's heads, as the learner does
    for user_id in ("formal", "casual"):
        metrics[user_id] = model.train_user(user_id, *data[user_id])
        model.train_shared(*everyone)
    for user_id in ("formal", "casual"):
        metrics[user_id] = model.train_user(user_id, *data[user_id])
    shared_after_shared = _clone(model.shared_head.state_dict())
    formal_after_formal = model.users.state_dict("formal")
    return Trained(model, data, metrics, shared_after_shared, formal_after_formal)


def _encoder_copy(base: TextEncoder, tuned_layers: int | None = None) -> TextEncoder:
    """An encoder with a copy of ``base``'s backbone weights and settings (or another number
    of trained top layers), and an empty cache."""
    layers = base.tuned_layers if tuned_layers is None else tuned_layers
    return TextEncoder(copy.deepcopy(base.backbone), base.tokenizer, max_length=base.max_length,
                       pooling=base.pooling, normalize=base.normalize,
                       batch_size=base.batch_size, cache_size=base.cache_size,
                       tuned_layers=layers, state_cache_size=64,
                       layer_pooling=base.layer_pooling)


def _heldout(trained: Trained, user_id: str) -> list[PairExample]:
    return split_heldout(trained.data[user_id][0], CONFIG.heldout_fraction, CONFIG.seed)[1]


@pytest.mark.parametrize("user_id", ["formal", "casual"])
def test_personal_heads_beat_the_shared_model_on_heldout_prompts(trained: Trained,
                                                                 user_id: str) -> None:
    model, held = trained.model, _heldout(trained, user_id)
    assert len(held) >= 8
    personal = model.pairwise_accuracy(user_id, held, personal=True)
    judge = model.pairwise_accuracy(user_id, held, personal=True, part=JUDGE)
    shared = model.pairwise_accuracy(user_id, held, personal=False)
    assert personal >= 0.85 and judge >= 0.85
    assert personal - shared >= 0.25 or shared >= 0.85
    metrics = trained.metrics[user_id]
    assert metrics.personal and metrics.steps > 0
    assert (metrics.heldout_accuracy, metrics.heldout_accuracy_shared,
            metrics.heldout_accuracy_judge) == (personal, shared, judge)


def test_the_shared_model_alone_cannot_please_both_users(trained: Trained) -> None:
    shared = [trained.model.pairwise_accuracy(u, _heldout(trained, u), personal=False)
              for u in ("formal", "casual")]
    assert sum(shared) / 2 <= 0.6, shared


def test_the_policy_head_trains_on_every_training_prompt_and_the_judge_on_one_half(
        trained: Trained) -> None:
    state = trained.model.users.state_dict("formal")
    policy, judge = state["weight"]
    assert policy.norm() > 0.1 and judge.norm() > 0.1 and not torch.equal(policy, judge)
    pairs, thumbs = trained.data["formal"]
    train = split_heldout([*pairs, *thumbs], CONFIG.heldout_fraction, CONFIG.seed)[0]
    judged = sum(fold_of(e, CONFIG.seed) == JUDGE for e in train)
    assert 0 < judged < len(train)
    assert state["n_examples"].tolist() == [len(train), judged]


def test_a_half_policy_head_shares_no_prompt_with_the_judge(trained: Trained) -> None:
    model = PersonalRewardModel(replace(CONFIG, policy_head_data="half"), trained.model.encoder)
    pairs, thumbs = trained.data["formal"]
    model.train_user("formal", pairs, thumbs)
    train = split_heldout([*pairs, *thumbs], CONFIG.heldout_fraction, CONFIG.seed)[0]
    n = [sum(fold_of(e, CONFIG.seed) == part for e in train) for part in (POLICY, JUDGE)]
    assert model.users.state_dict("formal")["n_examples"].tolist() == n
    assert n[POLICY] + n[JUDGE] == len(train) and min(n) > 0
    with pytest.raises(ValueError, match="policy_head_data"):
        replace(CONFIG, policy_head_data="both")


def test_training_a_user_moves_only_that_users_heads(trained: Trained) -> None:
    model = trained.model
    assert _equal(model.users.state_dict("formal"), trained.formal_after_formal)
    model.train_user("casual", *trained.data["casual"])
    assert _equal(model.users.state_dict("formal"), trained.formal_after_formal)
    assert _equal(_clone(model.shared_head.state_dict()), trained.shared_after_shared)
    assert trained.shared_after_shared["weight"].norm() > 0  # the shared head trained too
    prompt, formal, casual = make_triples(1, 999)[0]
    f = model.score("formal", [prompt, prompt], [formal, casual])
    c = model.score("casual", [prompt, prompt], [formal, casual])
    assert f[0] > f[1] and c[1] > c[0]


def test_user_head_round_trips_through_safetensors(trained: Trained, tmp_path: Path) -> None:
    model = trained.model
    prompts, completions = list(CORE), [f"Answer number {i}." for i in range(len(CORE))]
    before = model.score("casual", prompts, completions)
    before_judge = model.judge("casual", prompts, completions)
    shared_file = model.save_shared(tmp_path / "shared.safetensors")
    user_file = model.save_user("casual", tmp_path / "casual.safetensors")
    # two heads of F + 1 float32 each, plus a small header: no copy of anything shared
    assert user_file.stat().st_size < 2 * (model.hidden_size + 1) * 4 + 1024
    # Evicted and reloaded in the same model.
    model.users.evict("casual")
    assert not model.uses_personal("casual")
    model.load_user("casual", user_file)
    assert torch.equal(model.score("casual", prompts, completions), before)
    # A fresh model (same backbone weights) from the two files scores identically.
    fresh = PersonalRewardModel(CONFIG, encoder=_encoder_copy(model.encoder))
    fresh.load_shared(shared_file)
    fresh.load_user("casual", user_file)
    assert torch.allclose(fresh.score("casual", prompts, completions), before, atol=1e-5)
    assert torch.allclose(fresh.judge("casual", prompts, completions), before_judge, atol=1e-5)
    with pytest.raises(ValueError, match="another user"):
        fresh.load_user("formal", user_file)


def test_users_with_little_or_no_data_get_exactly_the_shared_score(trained: Trained) -> None:
    model = trained.model
    prompts, completions = ["What is inflation?"] * 2, ["Prices rise.", "Money loses value."]
    with torch.no_grad():  # the shared head alone
        shared = model.shared_head(model.head_inputs(prompts, completions)).squeeze(-1)
    few = trained.data["formal"][0][:3]
    newbie = [PairExample("newbie", p.prompt, p.chosen, p.rejected) for p in few]
    metrics = model.train_user("newbie", newbie)
    assert (metrics.steps, metrics.personal) == (0, False)
    assert torch.equal(model.score("newbie", prompts, completions), shared)
    assert torch.equal(model.judge("newbie", prompts, completions), shared)
    assert torch.equal(model.score("never-seen", prompts, completions), shared)
    assert not torch.equal(model.score("formal", prompts, completions), shared)
    # A loaded head trained on too few examples is not used either.
    state = model.users.state_dict("formal")
    state["n_examples"] = torch.tensor([CONFIG.user_min_examples - 1] * 2)
    model.users.load_state_dict("sparse", state)
    assert torch.equal(model.score("sparse", prompts, completions), shared)


def test_train_user_refuses_another_users_examples(trained: Trained) -> None:
    with pytest.raises(ValueError, match="example of user 'formal'"):
        trained.model.train_user("casual", trained.data["formal"][0])


def _shared_step_setup(trained: Trained, tuned_layers: int
                       ) -> tuple[PersonalRewardModel, TextEncoder, list[PairExample]]:
    """A model with a fresh copy of the encoder (``tuned_layers`` trained), the trained
    shared head, one text scored (so cached), and four pairs for two shared steps."""
    encoder = _encoder_copy(trained.model.encoder, tuned_layers=tuned_layers)
    cfg = RewardModelConfig(shared_steps=2, shared_batch_size=4, heldout_fraction=0.0,
                            tuned_layers=tuned_layers)
    model = PersonalRewardModel(cfg, encoder=encoder)
    model.shared_head.load_state_dict(trained.model.shared_head.state_dict())
    pairs = trained.data["formal"][0][:4]
    model.score("anyone", [pairs[0].prompt], [pairs[0].chosen])
    assert encoder.cached_entries() == 1
    return model, encoder, pairs


def test_shared_training_moves_only_the_top_layers_and_marks_embeddings_stale(
        trained: Trained) -> None:
    model, encoder, pairs = _shared_step_setup(trained, tuned_layers=2)
    top = {k: v.clone() for k, v in encoder.top.state_dict().items()}
    lower = next(encoder.backbone.embeddings.parameters()).detach().clone()
    metrics = model.train_shared(pairs)
    assert metrics.steps == 2 and encoder.cached_entries() == 0 and encoder.version == 1
    assert any(not torch.equal(encoder.top.state_dict()[k], v) for k, v in top.items())
    assert torch.equal(next(encoder.backbone.embeddings.parameters()), lower)
    assert not any(p.requires_grad for p in encoder.backbone.parameters())


def test_a_frozen_encoders_embeddings_stay_cached_through_shared_training(
        trained: Trained) -> None:
    model, encoder, pairs = _shared_step_setup(trained, tuned_layers=0)
    head = model.shared_head.weight.detach().clone()
    metrics = model.train_shared(pairs)
    assert metrics.steps == 2 and not torch.equal(model.shared_head.weight, head)
    texts = {(p.prompt, t) for p in pairs for t in (p.chosen, p.rejected)}
    assert encoder.version == 0 and encoder.cached_entries() == len(texts)  # none dropped


def test_cached_lower_states_give_the_full_encoders_embeddings(trained: Trained) -> None:
    encoder = _encoder_copy(trained.model.encoder, tuned_layers=2)
    prompts, completions = ["What is inflation?", "Hi"], ["Prices rise over time.", "Hello!"]
    cached = encoder.embed(prompts, completions)
    with torch.no_grad():
        batch = encoder.tokenizer(prompts, completions, padding=True, return_tensors="pt")
        states = encoder.backbone(**batch, output_hidden_states=True).hidden_states
        m = batch["attention_mask"].unsqueeze(-1).float()
        full = torch.cat([torch.nn.functional.normalize((states[d] * m).sum(1) / m.sum(1),
                                                        dim=-1) for d in encoder.depths], -1)
    assert encoder.depths == tuple(range(len(states)))  # every depth, embeddings included
    assert full.shape == (2, encoder.feature_size)
    assert torch.allclose(cached, full, atol=1e-5)


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
    assert reloaded is not None and torch.equal(reloaded.weight.data, torch.full((2, 4), 1.0))
    assert pool.resident_users() == ["c", "a"] and saved == ["a", "b"]
    bad = pool.state_dict("a") | {"weight": torch.tensor([[1.0, float("nan"), 0.0, 0.0]] * 2)}
    with pytest.raises(ValueError, match="non-finite"):
        pool.load_state_dict("a", bad)


def test_a_user_with_no_prompt_under_the_threshold_still_gets_one_held_out() -> None:
    prompts = [f"prompt {i}" for i in range(3)]
    user = next(f"u{i}" for i in range(1000)
                if not any(is_heldout_prompt(f"u{i}", p, 0.2, 0) for p in prompts))
    held = heldout_prompts(user, prompts, 0.2, 0)
    assert len(held) == 1
    pairs = [PairExample(user, p, "a", "b") for p in prompts]
    assert {p.prompt for p in split_heldout(pairs, 0.2, 0)[1]} == held
    assert heldout_prompts(user, prompts[:1], 0.2, 0) == set()  # one prompt: nothing to spare
