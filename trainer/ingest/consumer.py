"""The trainer's Kafka edge: one consumer group over ``generations`` + ``feedback``.

Both topics are keyed by user id with the same partition count, so partition p
of each holds the same users; the range assignor gives both to one member.
Loop: poll -> dead-letter what cannot be parsed (acked) -> journal the batch
with its positions (one transaction) -> commit offsets. On assignment each
partition resumes at the journal's position, or at the beginning when the
journal has never seen it (state is rebuilt from the log). The journal keeps only
the assigned partitions: what it held of the others is deleted on assignment,
and their users are handed to the training loop to forget (``take_released``).
"""

from __future__ import annotations

import logging
import threading
import time

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from services.contract.records import DeadLetterRecord
from trainer.config import TrainerConfig
from trainer.ingest.journal import Consumed, DeadLetter, Journal, dead_letter_body
from trainer.metrics import TrainerMetrics

log = logging.getLogger(__name__)


class _Resume(ConsumerRebalanceListener):
    def __init__(self, ingest: Ingest) -> None:
        self._ingest = ingest

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        log.info("partitions revoked: %s", sorted((tp.topic, tp.partition) for tp in revoked))
        self._ingest.revoke(revoked)

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._ingest.resume(assigned)


class Ingest(threading.Thread):
    """Consumes into the journal until stopped."""

    def __init__(self, cfg: TrainerConfig, journal: Journal, metrics: TrainerMetrics) -> None:
        super().__init__(name="ingest", daemon=True)
        self._cfg = cfg
        self._journal = journal
        self._metrics = metrics
        self._stop_event = threading.Event()
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        self.assigned: frozenset[int] = frozenset()
        """Partitions of the feedback topic this process owns (replaced, never mutated:
        the training thread reads it while rebalances happen on this thread)."""
        self.error: BaseException | None = None
        self._to_validate: list[TopicPartition] = []
        self._released: list[str] = []
        self._released_lock = threading.Lock()

    def stop(self) -> None:
        self._stop_event.set()

    def owns(self, partition: int | None) -> bool:
        """Whether this process owns ``partition`` of the feedback topic now."""
        return partition is not None and partition in self.assigned

    def revoke(self, revoked: list[TopicPartition]) -> None:
        """Stop owning partitions at once, so training of their users stops (between PPO
        iterations) before another member is assigned them."""
        gone = {tp.partition for tp in revoked if tp.topic == self._cfg.kafka.feedback_topic}
        self.assigned = self.assigned - gone

    def take_released(self) -> list[str]:
        """Users of partitions this process lost since the last call (their journal rows
        are gone): the training loop drops what it holds of them."""
        with self._released_lock:
            out, self._released = self._released, []
        return out

    def resume(self, assigned: list[TopicPartition]) -> None:
        assert self._consumer is not None
        released = self._journal.release({(tp.topic, tp.partition) for tp in assigned})
        if released:
            log.info("released %d users of partitions no longer owned", len(released))
            with self._released_lock:
                self._released += released
        positions = self._journal.positions()
        for tp in assigned:
            pos = positions.get((tp.topic, tp.partition))
            if pos is None:
                self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, pos)
        self._to_validate = list(assigned)  # checked on this thread before the next poll
        self.assigned = frozenset(tp.partition for tp in assigned
                                  if tp.topic == self._cfg.kafka.feedback_topic)
        log.info("owning partitions %s (resumed from the journal)", sorted(self.assigned))

    def run(self) -> None:
        k = self._cfg.kafka
        try:
            self._consumer = KafkaConsumer(
                bootstrap_servers=k.bootstrap_servers, group_id=self._cfg.group_id,
                client_id=f"{k.client_id}-trainer", enable_auto_commit=False,
                auto_offset_reset="earliest", session_timeout_ms=k.session_timeout_ms,
                heartbeat_interval_ms=k.heartbeat_interval_ms,
                max_poll_interval_ms=k.max_poll_interval_ms, fetch_max_wait_ms=k.fetch_max_wait_ms)
            self._consumer.subscribe([k.generations_topic, k.feedback_topic],
                                     listener=_Resume(self))
            self._producer = KafkaProducer(bootstrap_servers=k.bootstrap_servers, acks="all",
                                           enable_idempotence=True,
                                           client_id=f"{k.client_id}-trainer-dlq")
            while not self._stop_event.is_set():
                self.poll_once()
        except BaseException as exc:
            self.error = exc
            log.exception("ingest stopped")
            raise
        finally:
            if self._consumer is not None:
                self._consumer.close(autocommit=False)
            if self._producer is not None:
                self._producer.close(timeout=5)

    def _validate_positions(self) -> None:
        """A journal position past the end of the log means the log was reset (e.g.
        an in-memory broker restarted): read that partition again from the start
        (feedback ids keep it exactly once). Blocking calls are not allowed in
        the rebalance callback, so this runs on the consumer's own thread."""
        assert self._consumer is not None
        tps, self._to_validate = self._to_validate, []
        ends = self._consumer.end_offsets(tps)
        for tp in tps:
            pos = self._consumer.position(tp)
            if pos > ends[tp]:
                log.warning("position %d is past the end %d of %s-%d: the log was reset; "
                            "reading it again from the beginning", pos, ends[tp], tp.topic,
                            tp.partition)
                self._consumer.seek_to_beginning(tp)

    def poll_once(self) -> int:
        assert self._consumer is not None
        if self._to_validate:
            self._validate_positions()
        polled = self._consumer.poll(timeout_ms=self._cfg.poll_timeout_ms, max_records=500)
        batch = [Consumed(tp.topic, tp.partition, r.offset, r.key, r.value)
                 for tp, records in polled.items() for r in records]
        if batch:
            joined = self._journal.apply(batch, self._dead_letter)
            self._consumer.commit()  # only after the journal holds the batch durably
            self._metrics.consumed.inc(len(batch))
            self._metrics.joined.inc(joined)
        expired = self._journal.expire_pending(self._cfg.join_timeout_s)
        for user, body in expired:
            self._send_dlq(self._cfg.kafka.feedback_topic, DeadLetterRecord(
                source_topic=self._cfg.kafka.feedback_topic, partition=-1, offset=-1,
                reason="unjoinable: generation not found", key=user, value=body,
                created_at=time.time()))
        self._observe_lag()
        return len(batch)

    def _dead_letter(self, dead: list[DeadLetter]) -> None:
        for d in dead:
            self._send_dlq(d.record.topic, DeadLetterRecord(**dead_letter_body(d),
                                                            created_at=time.time()))

    def _send_dlq(self, topic: str, record: DeadLetterRecord) -> None:
        assert self._producer is not None
        dlq = topic + self._cfg.kafka.dlq_suffix
        self._producer.send(dlq, key=(record.key or "").encode(),
                            value=record.to_json()).get(timeout=30)
        self._metrics.dead_lettered.labels(topic, record.reason.split(":")[0]).inc()
        log.warning("dead-lettered a %s record: %s", topic, record.reason)

    def _observe_lag(self) -> None:
        assert self._consumer is not None
        try:
            tps = list(self._consumer.assignment())
            if not tps:
                return
            ends = self._consumer.end_offsets(tps)
            for tp in tps:
                self._metrics.lag.labels(tp.topic, str(tp.partition)).set(
                    max(0, ends[tp] - self._consumer.position(tp)))
        except KafkaError:
            log.debug("lag not observed", exc_info=True)



