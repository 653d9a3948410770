"""The pure core behind the servicer: plain dataclasses in and out."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

from services.contract.ids import validate_user_id
from services.contract.status import TrainerReport
from services.contract.store import AdapterStore
from services.server.feedback import FeedbackResult, FeedbackService
from services.server.generation import Chunk, GenerationService
from services.server.hot_swap import AdapterManager
from services.server.validation import FeedbackParams, GenerateParams


@dataclass(frozen=True)
class UserStatusView:
    user_id: str
    adapter_version: str
    feedback_accepted: int
    generations_served: int
    trainer: TrainerReport | None = None
    """The trainer's latest report; None until it reported on the user."""


class AssistantCore:
    def __init__(self, generation: GenerationService, feedback: FeedbackService,
                 adapters: AdapterManager, store: AdapterStore) -> None:
        self.generation = generation
        self.feedback = feedback
        self.adapters = adapters
        self._store = store
        self._served: Counter[str] = Counter()

    async def generate(self, params: GenerateParams) -> AsyncIterator[Chunk]:
        async for chunk in self.generation.generate(params):
            if chunk.finished:
                self._served[params.user_id] += 1
            yield chunk

    async def submit_feedback(self, params: FeedbackParams) -> FeedbackResult:
        return await self.feedback.submit(params)

    def forget_user(self, user_id: str) -> None:
        """Drop this process's counters of an erased user."""
        self._served.pop(user_id, None)
        self.feedback.accepted.pop(user_id, None)

    def user_status(self, user_id: str) -> UserStatusView:
        validate_user_id(user_id)
        return UserStatusView(
            user_id=user_id,
            adapter_version=self.adapters.version_of(user_id),
            feedback_accepted=self.feedback.accepted[user_id],
            generations_served=self._served[user_id],
            trainer=self._store.read_status(user_id),
        )
