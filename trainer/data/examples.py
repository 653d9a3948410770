"""From journaled feedback to reward-model examples and PPO prompts (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.contract.records import GenerationRecord
from trainer.data.chat import ChatMessages, prompt_text
from trainer.data.preferences import PreferenceConfig, PreferenceData, build_preferences
from trainer.ingest.journal import Joined
from trainer.reward.data import PairExample, ThumbExample, stable_hash


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
                   eval_fraction: float = 0.25) -> UserExamples:
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

    # 3. the user's own prompts, split by a stable hash into PPO and evaluation sets
    prompts: dict[str, ChatMessages] = {}
    for g in gens.values():
        prompts.setdefault(prompt_text(g.messages), [dict(m) for m in g.messages])
    train, held = [], []
    for key in sorted(prompts):
        held_out = stable_hash(user_id, key) % 1000 < eval_fraction * 1000
        (held if held_out else train).append(prompts[key])
    if not train or not held:  # too few prompts to split: use all for both
        train = held = [prompts[k] for k in sorted(prompts)]
    return UserExamples(data, pairs, thumbs, train, held, len(joined),
                        max((j.seq for j in joined), default=0))
