"""SubmitFeedback: verify the rated responses are this user's, then write durably."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from services.contract.config import KafkaConfig
from services.contract.errors import DomainError, FailedPrecondition, InvalidArgument
from services.contract.records import FeedbackRecord
from services.server.kafka_io import DurableProducer
from services.server.metrics import ServerMetrics
from services.server.response_ids import ResponseSigner
from services.server.validation import FeedbackParams


@dataclass(frozen=True)
class FeedbackResult:
    feedback_id: str
    partition: int
    offset: int


class FeedbackService:
    def __init__(self, kafka: KafkaConfig, producer: DurableProducer, signer: ResponseSigner,
                 metrics: ServerMetrics,
                 erased_at: Callable[[str], float] = lambda _user: 0.0) -> None:
        self._kafka = kafka
        self._producer = producer
        self._signer = signer
        self._metrics = metrics
        self._erased_at = erased_at
        """Unix seconds of a user's latest erasure this replica knows of (0.0: none)."""
        self.accepted: Counter[str] = Counter()

    async def submit(self, params: FeedbackParams) -> FeedbackResult:
        try:
            result = await self._submit(params)
        except DomainError as exc:
            self._metrics.feedback_by("rejected", type(exc).__name__).inc()
            raise
        self._metrics.feedback_by("accepted", params.kind).inc()
        self.accepted[params.user_id] += 1
        return result

    async def _submit(self, params: FeedbackParams) -> FeedbackResult:
        # 1. every response was issued to this user (signature + user binding)
        refs = [self._signer.verify(rid, params.user_id) for rid in params.response_ids]
        # 2. a ranking compares candidates of one prompt (one Generate call)
        groups = {ref.group_id for ref in refs}
        if len(groups) != 1:
            raise InvalidArgument("ranking mixes responses of different prompts")
        if len({ref.candidate_index for ref in refs}) != len(refs):
            raise InvalidArgument("ranking names the same candidate twice")
        # 3. nothing served before the user's data was erased comes back through feedback
        erased_at = self._erased_at(params.user_id)
        if erased_at and min(ref.issued_at_ms for ref in refs) <= erased_at * 1000:
            raise FailedPrecondition("the rated response was served before the user's data "
                                     "was erased; rate answers served since")
        # 4. durable write; OK only after the broker's acknowledgement
        record = FeedbackRecord(
            feedback_id=params.feedback_id or uuid.uuid4().hex, user_id=params.user_id,
            labeler_id=params.labeler_id, kind=params.kind,
            response_ids=list(params.response_ids), group_id=refs[0].group_id,
            created_at=time.time(), up=params.up if params.kind == "thumbs" else None,
        )
        ack = await self._producer.send(self._kafka.feedback_topic, params.user_id,
                                        record.to_json())
        return FeedbackResult(record.feedback_id, ack.partition, ack.offset)
