"""From journaled feedback to reward-model examples and PPO prompts (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.contract.records import GenerationRecord
from trainer.data.chat import ChatMessages, prompt_text
from trainer.data.preferences import PreferenceConfig, PreferenceData, build_preferences
from trainer.ingest.journal import Joined
from trainer.reward.data import PairExample, ThumbExample, heldout_prompts


@dataclass(frozen=True)
class UserExamples:
    """One user's training material."""

    data: PreferenceData
    pairs: list[PairExample]
    thumbs: list[ThumbExample]
    train_prompts: list[ChatMessages]
    eval_prompts: list[ChatMessages]
    feedback_events: int
    through_seq: int


def build_examples(user_id: str, joined: Sequence[Joined], cfg: PreferenceConfig,
                   heldout_fraction: float = 0.2, seed: int = 0) -> UserExamples:
    """The user's training material. ``heldout_fraction`` and ``seed`` must be the reward
    model's (``RewardModelConfig``): the prompts it holds out are the evaluation prompts."""
    # 1. consensus preference data over every event of the user (deduplicated by id)
    data = build_preferences([j.event for j in joined], cfg)
    gens: dict[str, GenerationRecord] = {}
    for j in joined:
        gens.update(j.generations)

    # 2. response ids -> texts
    def prompt_of(rid: str) -> str:
        return prompt_text(gens[rid].messages)

    pairs = [PairExample(user_id, prompt_of(p.chosen_id), gens[p.chosen_id].completion,
                         gens[p.rejected_id].completion, p.weight)
             for p in data.pairs if p.chosen_id in gens and p.rejected_id in gens]
    thumbs = [ThumbExample(user_id, prompt_of(t.response_id), gens[t.response_id].completion,
                           t.label, t.weight)
              for t in data.thumbs if t.response_id in gens]

    # 3. the user's own prompts, split as the reward model splits them: PPO samples the
    #    training prompts, the publish gate compares adapters on the held-out ones
    prompts: dict[str, ChatMessages] = {}
    for g in gens.values():
        prompts.setdefault(prompt_text(g.messages), [dict(m) for m in g.messages])
    held_keys = heldout_prompts(user_id, prompts, heldout_fraction, seed)
    train = [prompts[k] for k in sorted(prompts) if k not in held_keys]
    held = [prompts[k] for k in sorted(held_keys)]
    return UserExamples(data, pairs, thumbs, train, held, len(joined),
                        max((j.seq for j in joined), default=0))
