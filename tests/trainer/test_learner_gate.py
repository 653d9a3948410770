"""The publish gate of a training turn, on the tiny policy and the real MiniLM
reward model: refused by the judge's reward, refused by KL, then published; and the
verdict's rules on their own (degenerate outputs, the judge rather than the optimised
reward)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from services.contract.records import GenerationRecord
from services.contract.store import AdapterStore
from trainer.config import PublishConfig, ScheduleConfig, TrainerConfig
from trainer.data.chat import prompt_text
from trainer.data.examples import build_examples
from trainer.data.preferences import FeedbackEvent, PreferenceConfig
from trainer.ingest.journal import Joined
from trainer.loop import gate
from trainer.loop.degenerate import OutputHealth, output_health, repeated_ngram_share
from trainer.loop.gate import AdapterSample, snapshot, verdict
from trainer.loop.learner import Learner
from trainer.metrics import TrainerMetrics
from trainer.ppo.config import PPOConfig
from trainer.ppo.experience import collect
from trainer.reward.config import RewardModelConfig
from trainer.reward.data import split_heldout
from trainer.reward.model import PersonalRewardModel

USER = "gate-user"
PROMPTS = ["tell me about the sea", "name a fruit", "how are you", "say something",
           "what is rain", "pick a colour", "count to three", "describe a cat"]
HELDOUT = 0.3


def joined_history(user: str = USER) -> list[Joined]:
    out = []
    for i, prompt in enumerate(PROMPTS):
        gens = {}
        for c, text in enumerate(["ok.", "a longer answer here.", "a very long and detailed "
                                                                 "answer with many words."]):
            rid = f"r{i}-{c}"
            gens[rid] = GenerationRecord(
                response_id=rid, group_id=f"g{i}", user_id=user, candidate_index=c,
                num_candidates=3, messages=[{"role": "user", "content": prompt}],
                prompt_token_ids=[1], completion=text, completion_token_ids=[2],
                finish_reason="stop", adapter_version="", base_model="tiny", sampling={},
                created_at=1.0)
        event = FeedbackEvent(f"f{i}", user, user, f"g{i}", "ranking",
                              (f"r{i}-0", f"r{i}-1", f"r{i}-2"), None, 2.0)
        out.append(Joined(i + 1, event, gens))
    return out


@pytest.fixture(scope="module")
def learner_setup(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("gate")
    cfg = TrainerConfig(
        adapter_store=str(tmp / "store"), state_dir=str(tmp / "state"),
        policy_model=str(tiny_model_dir), policy_model_id="tiny",
        schedule=ScheduleConfig(ppo_steps_per_turn=2, min_pairs=2),
        ppo=PPOConfig(batch_size=4, mini_batch_size=2, max_new_tokens=6, lr=1e-2,
                      temperature=0.5),
        reward=RewardModelConfig(user_min_examples=4, heldout_fraction=HELDOUT,
                                 shared_steps=4),
        # the tiny random model cannot end an answer: only the verdict tests below check
        # the degenerate-output rules
        publish=PublishConfig(eval_prompts=2, eval_samples=1, min_improvement=1e9,
                              max_truncated_share=1.0, max_empty_share=1.0,
                              max_repetitive_share=1.0))
    announced: list = []
    metrics = TrainerMetrics()
    learner = Learner(cfg, AdapterStore(cfg.adapter_store), metrics, announced.append)
    return learner, cfg, announced, metrics


def test_gate_refuses_then_publishes(learner_setup, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    learner, cfg, announced, metrics = learner_setup
    store = AdapterStore(cfg.adapter_store)
    ex = build_examples(USER, joined_history(), PreferenceConfig(), HELDOUT)
    assert len(ex.pairs) == 3 * len(PROMPTS) and ex.eval_prompts and ex.train_prompts
    sampled: list[int] = []  # the gate's generations (each adapter sampled on its prompts)
    monkeypatch.setattr(gate, "collect", lambda *a, **k: sampled.append(1) or collect(*a, **k))
    scored_prompts: set[str] = set()  # what the optimised reward (the policy head) read
    head_score = PersonalRewardModel.score
    monkeypatch.setattr(PersonalRewardModel, "score", lambda self, user, prompts, texts: (
        scored_prompts.update(prompts) or head_score(self, user, prompts, texts)))

    # 1. a candidate that does not beat the served adapter by the margin is kept back
    first = learner.turn(USER, ex)
    assert len(sampled) == 2, "the candidate and the served adapter are sampled"
    assert first.decision.startswith("kept: candidate judge reward"), first.decision
    assert first.steps == 2 and store.latest(USER) is None and announced == []
    assert scored_prompts & {prompt_text(p) for p in ex.eval_prompts}, \
        "the gate's optimised score covers the held-out prompts"
    assert scored_prompts <= {prompt_text(p) for p in ex.train_prompts + ex.eval_prompts}, \
        "the reward model reads every prompt in its own format, not the chat template's"
    pool = learner._ppo.pool
    served = learner._served[USER]
    trained = snapshot(pool, USER)
    assert any(not torch.equal(served[k], trained[k]) for k in served), \
        "training goes on from the refused candidate"

    # 2. within the reward margin but over the KL bound: still kept back
    learner._cfg = dataclasses.replace(cfg, publish=dataclasses.replace(
        cfg.publish, min_improvement=-1e9, kl_bound=-1e9,  # the KL estimate may be < 0
        kl_stop_share=None))  # the gate's refusal alone (the turn's KL stop is tested below)
    second = learner.turn(USER, ex)
    assert second.decision.startswith("kept: KL"), second.decision
    assert store.latest(USER) is None
    assert all(torch.equal(served[k], learner._served[USER][k]) for k in served)
    # ... and training restarts from the served adapter with twice the KL coefficient
    now = snapshot(pool, USER)
    assert all(torch.equal(served[k], now[k]) for k in served)
    assert learner._ppo.progress(USER).kl_coef == pytest.approx(2 * cfg.ppo.kl_coef)
    assert len(sampled) == 3, "the served adapter is unchanged: only the candidate is sampled"
    # what the gate reused is what sampling the served weights again gives
    prompts = gate.held_out_sample(USER, ex.eval_prompts, cfg.publish.eval_prompts)
    kept = learner._gate_samples.get(USER, gate.fingerprint(served, prompts,
                                                            cfg.publish.eval_samples))
    trained = snapshot(pool, USER)
    gate.restore(pool, USER, served)
    score = gate.rendered_reward(learner._rm.judge, learner._ppo, USER, prompts)
    with pytest.raises(ValueError, match="prompts it was not made for"):
        score(["user: a prompt of no rollout"], ["an answer"])
    _, fresh = gate.measure(learner._ppo, USER, prompts, score, score, cfg.publish)
    gate.restore(pool, USER, trained)
    assert kept == fresh

    # 3. through the gate: published, announced, and the baseline moves to it
    learner._cfg = dataclasses.replace(cfg, publish=dataclasses.replace(
        cfg.publish, min_improvement=-1e9, kl_bound=1e9))
    third = learner.turn(USER, ex)
    assert third.decision == "published v1" and third.published_version == "v1"
    assert len(sampled) == 5  # the served sample again; the fresh measurement above
    manifest = store.manifest(USER, "v1")
    assert manifest.steps == 6 and manifest.feedback_count == len(PROMPTS)
    assert manifest.metrics["kl_coef"] == pytest.approx(2 * cfg.ppo.kl_coef)
    assert manifest.reward_before == pytest.approx(third.reward_before)
    assert manifest.metrics["judge_after"] == pytest.approx(third.judge_after)
    assert [a.version for a in announced] == ["v1"] and announced[0].sha256 == manifest.sha256
    now = snapshot(pool, USER)
    assert all(torch.equal(now[k], learner._served[USER][k]) for k in now)
    assert metrics.published._value.get() == 1
    status = learner.status(USER, ex, third)
    assert status.preference_pairs == 3 * len(PROMPTS)
    assert status.last_publish_decision == "published v1"
    rm_cfg = RewardModelConfig()
    held = split_heldout(ex.pairs, HELDOUT, rm_cfg.seed)[1]
    assert status.reward_model_heldout_pairs == third.rm_heldout_pairs == len(held) > 0
    assert third.rm_accuracy is not None


def test_interrupted_turn_publishes_nothing(learner_setup) -> None:  # type: ignore[no-untyped-def]
    learner, _, announced, _ = learner_setup
    ex = build_examples(USER, joined_history(), PreferenceConfig(), HELDOUT)
    before = len(announced)
    result = learner.turn(USER, ex, should_stop=lambda: True)
    assert result.interrupted and result.decision == "interrupted"
    assert len(announced) == before


def test_a_turn_stops_at_its_kl_limit_and_keeps_the_last_iterate_within(  # type: ignore[no-untyped-def]
        learner_setup, monkeypatch) -> None:
    """Each rollout measures the KL of the adapter its iteration began from. Past the
    turn's limit (kl_stop_share x kl_bound, or where the turn began when that is further
    out), the adapter goes back to the last iterate measured within it, which is what
    the gate sees and publishes, and the user's KL coefficient doubles. With the stop
    off, the turn runs all its iterations."""
    learner, cfg, _, metrics = learner_setup
    user = "kl-user"
    learner._cfg = dataclasses.replace(
        cfg, schedule=dataclasses.replace(cfg.schedule, ppo_steps_per_turn=4),
        publish=dataclasses.replace(cfg.publish, min_improvement=-1e9, kl_bound=40.0,
                                    kl_stop_share=0.5))
    ex = build_examples(user, joined_history(user), PreferenceConfig(), HELDOUT)
    _, ppo = learner._models()
    train = ppo.train_user
    began: list[dict[str, torch.Tensor]] = []
    kls: list[float] = []

    def scripted(user_id, prompts, reward_fn, steps=None):  # type: ignore[no-untyped-def]
        began.append(snapshot(ppo.pool, user_id))
        return dataclasses.replace(train(user_id, prompts, reward_fn, steps=steps),
                                   kl=kls.pop(0))

    monkeypatch.setattr(ppo, "train_user", scripted)
    stops = metrics.ppo_kl_stops._value.get()
    # the limit is max(0.5 x 40, 25 where the turn began) = 25: the 4th rollout is past it
    kls[:] = [25.0, 12.0, 24.0, 31.0]
    result = learner.turn(user, ex)
    assert (result.steps, result.ppo_stop) == (4, "kl"), result
    assert metrics.ppo_kl_stops._value.get() == stops + 1
    assert ppo.progress(user).kl_coef == pytest.approx(2 * cfg.ppo.kl_coef)
    assert result.published_version == "v1", result.decision
    published = learner._served[user]
    assert all(torch.equal(published[k], began[2][k]) for k in published), \
        "the candidate is the last iterate measured within the limit"
    assert any(not torch.equal(began[2][k], began[3][k]) for k in published)

    learner._cfg = dataclasses.replace(learner._cfg, publish=dataclasses.replace(
        learner._cfg.publish, kl_stop_share=None))
    kls[:] = [1.0, 100.0, 100.0, 100.0]
    again = learner.turn(user, ex)
    assert (again.steps, again.ppo_stop) == (4, "budget"), again
    assert metrics.ppo_kl_stops._value.get() == stops + 1
    learner._cfg = cfg


def test_turns_are_short_until_the_first_publish(learner_setup) -> None:  # type: ignore[no-untyped-def]
    """``ppo_steps_until_published``: a user with no published adapter gets that many
    iterations a turn, and ``ppo_steps_per_turn`` once one is published; a refused
    candidate keeps the turns short."""
    learner, cfg, _, _ = learner_setup
    user = "stepped-user"
    ex = build_examples(user, joined_history(user), PreferenceConfig(), HELDOUT)
    schedule = dataclasses.replace(cfg.schedule, ppo_steps_per_turn=3,
                                   ppo_steps_until_published=1)
    learner._cfg = dataclasses.replace(cfg, schedule=schedule)  # the judge refuses all
    refused = learner.turn(user, ex)
    assert (refused.steps, refused.published_version) == (1, ""), refused.decision
    learner._cfg = dataclasses.replace(cfg, schedule=schedule, publish=dataclasses.replace(
        cfg.publish, min_improvement=-1e9, kl_bound=1e9))
    first = learner.turn(user, ex)
    assert (first.steps, first.published_version) == (1, "v1"), first.decision
    later = learner.turn(user, ex)
    assert later.steps == 3, later.decision
    learner._cfg = cfg


def test_schedule_config_refuses_turns_without_iterations() -> None:
    with pytest.raises(ValueError, match="ppo_steps_per_turn"):
        ScheduleConfig(ppo_steps_per_turn=0)
    with pytest.raises(ValueError, match="ppo_steps_until_published"):
        ScheduleConfig(ppo_steps_until_published=-1)


def _rival_publish(store: AdapterStore, parent: str, tmp: Path) -> str:
    """Another trainer publishes the user: a copy of ``parent`` with other weights."""
    from safetensors.torch import load_file, save_file

    src = store.version_dir(USER, parent)
    tmp.mkdir()
    for f in src.iterdir():
        if f.name != "manifest.json":
            (tmp / f.name).write_bytes(f.read_bytes())
    weights = load_file(str(tmp / "adapter_model.safetensors"))
    save_file({k: v + 0.01 for k, v in weights.items()}, str(tmp / "adapter_model.safetensors"))
    return store.publish(USER, tmp, "tiny", parent, steps=100).version


def test_publish_from_a_superseded_parent_is_fenced_then_reloaded(  # type: ignore[no-untyped-def]
        learner_setup, tmp_path: Path) -> None:
    """Another trainer publishes the user while this one's turn runs: the candidate
    (trained from the older version) is refused by the store and counted, nothing is
    announced, the turn is dropped; the next turn reloads the rival's version and
    publishes its successor, naming it as the parent."""
    learner, cfg, announced, metrics = learner_setup
    store = AdapterStore(cfg.adapter_store)
    learner._cfg = dataclasses.replace(cfg, publish=dataclasses.replace(
        cfg.publish, min_improvement=-1e9, kl_bound=1e9))
    ex = build_examples(USER, joined_history(), PreferenceConfig(), HELDOUT)
    parent = store.latest(USER) or ""
    if not parent:  # run alone: publish a first version through the gate
        assert learner.turn(USER, ex).published_version == "v1"
        parent = "v1"
    before, fenced = len(announced), metrics.publish_fenced._value.get()
    rival: list[str] = []

    def rival_publishes_mid_turn() -> bool:
        if not rival:
            rival.append(_rival_publish(store, parent, tmp_path / "rival"))
        return False

    result = learner.turn(USER, ex, should_stop=rival_publishes_mid_turn)
    assert result.interrupted and result.decision.startswith("fenced"), result.decision
    assert metrics.publish_fenced._value.get() == fenced + 1
    assert store.latest(USER) == rival[0] and len(announced) == before
    rival_weights = store.manifest(USER, rival[0]).sha256

    nxt = learner.turn(USER, ex)
    assert nxt.published_version == f"v{int(rival[0][1:]) + 1}", nxt.decision
    manifest = store.manifest(USER, nxt.published_version)
    assert manifest.parent_version == rival[0] and manifest.sha256 != rival_weights
    assert manifest.steps > 100, "progress was restored from the rival's manifest"
    assert metrics.publish_fenced._value.get() == fenced + 1

    # between turns: the next turn starts from the rival's version, so nothing is fenced
    between = _rival_publish(store, nxt.published_version, tmp_path / "rival2")
    last = learner.turn(USER, ex)
    assert last.published_version == f"v{int(between[1:]) + 1}", last.decision
    assert store.manifest(USER, last.published_version).parent_version == between
    assert metrics.publish_fenced._value.get() == fenced + 1


def _sample(judge: float, optimised: float = 0.0, kl: float = 0.5,
            truncated: float = 0.0, empty: float = 0.0, repetitive: float = 0.0
            ) -> AdapterSample:
    return AdapterSample(judge, optimised, kl, OutputHealth(empty, truncated, repetitive))


def test_verdict_trusts_the_judge_not_the_optimised_reward() -> None:
    gate = PublishConfig()
    hacked = verdict(gate, 2, _sample(0.5, optimised=0.1), _sample(0.4, optimised=3.0))
    assert (hacked.publish, hacked.reason) == (False, "no_gain")
    better = verdict(gate, 2, _sample(0.5, optimised=0.1), _sample(0.7, optimised=0.0))
    assert better.publish


@pytest.mark.parametrize("field", ["empty", "truncated", "repetitive"])
def test_verdict_refuses_degenerate_outputs_worse_than_the_served(field: str) -> None:
    gate = PublishConfig(max_empty_share=0.1, max_truncated_share=0.5,
                         max_repetitive_share=0.25)
    bad = verdict(gate, 2, _sample(0.0), _sample(1.0, **{field: 0.9}))
    assert (bad.publish, bad.reason) == (False, "degenerate") and field in bad.decision
    # no worse than what is served already (e.g. a model that never ends at this limit)
    same = verdict(gate, 2, _sample(0.0, **{field: 0.9}), _sample(1.0, **{field: 0.9}))
    assert same.publish
    # a little worse than what is served, within the margin: noise of a 16-sample gate
    # (a concise user's candidate cut 16 of 16 times where the served one was cut 14 of 16)
    near = verdict(gate, 2, _sample(0.0, **{field: 0.875}), _sample(1.0, **{field: 1.0}))
    assert near.publish
    beyond = verdict(PublishConfig(degenerate_margin=0.1), 2,
                     _sample(0.0, **{field: 0.875}), _sample(1.0, **{field: 1.0}))
    assert (beyond.publish, beyond.reason) == (False, "degenerate")


def test_publish_config_refuses_bad_shares_and_a_kl_backoff_below_one() -> None:
    with pytest.raises(ValueError, match="kl_backoff"):
        PublishConfig(kl_backoff=0.5)
    with pytest.raises(ValueError, match="kl_stop_share"):
        PublishConfig(kl_stop_share=0.0)
    with pytest.raises(ValueError, match="degenerate_margin"):
        PublishConfig(degenerate_margin=-0.1)
    with pytest.raises(ValueError, match="max_truncated_share"):
        PublishConfig(max_truncated_share=1.5)


def test_output_health_counts_empty_truncated_and_repetitive_answers() -> None:
    assert repeated_ngram_share("a b c d a b c d a b c d", 4) == pytest.approx(5 / 9)
    assert repeated_ngram_share("the cat sat on the mat today", 4) == 0.0
    health = output_health(["", "fine answer here", "go go go go go go go go", "ok"],
                           [True, False, True, True], ngram=2, max_repeated_share=0.3)
    assert (health.empty, health.truncated, health.repetitive) == (0.25, 0.25, 0.25)
