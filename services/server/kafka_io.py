"""Kafka at the edge: an asyncio-friendly durable producer, topic set-up, and a
follower thread for broadcast topics. Speaks only the Kafka protocol
(kafka-python), so any Kafka-compatible cluster works."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, TopicAlreadyExistsError

from services.contract.config import KafkaConfig
from services.contract.errors import Unavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ack:
    """Where the broker durably stored a record."""

    topic: str
    partition: int
    offset: int


def all_topics(cfg: KafkaConfig) -> list[str]:
    base = [cfg.generations_topic, cfg.feedback_topic, cfg.adapter_updates_topic]
    return base + [t + cfg.dlq_suffix for t in base]


KEEP_FOREVER_MS = -1
ADAPTER_UPDATES_RETENTION_MS = 7 * 24 * 3600 * 1000
DEAD_LETTER_RETENTION_MS = 30 * 24 * 3600 * 1000


def topic_retention_ms(cfg: KafkaConfig) -> dict[str, int]:
    """retention.ms of each topic (docs/operations.md, "Topics"). generations and
    feedback are kept forever: a trainer that takes over a partition rebuilds its users'
    complete preference data from them; adapter-updates only notifies (servers also
    rescan the store); dead letters are kept long enough to inspect and replay."""
    out = {cfg.generations_topic: KEEP_FOREVER_MS, cfg.feedback_topic: KEEP_FOREVER_MS,
           cfg.adapter_updates_topic: ADAPTER_UPDATES_RETENTION_MS}
    out.update({t + cfg.dlq_suffix: DEAD_LETTER_RETENTION_MS for t in list(out)})
    return out


def ensure_topics(cfg: KafkaConfig, timeout_s: float = 30.0) -> list[str]:
    """Create the service's topics if missing, with their retention; returns the ones
    created. Existing topics are left as they are."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=cfg.bootstrap_servers,
                                     client_id=f"{cfg.client_id}-admin")
            break
        except KafkaError as exc:
            if time.monotonic() > deadline:
                raise
            log.info("waiting for Kafka at %s: %s", cfg.bootstrap_servers, exc)
            time.sleep(0.5)
    try:
        existing = set(admin.list_topics())
        missing = [t for t in all_topics(cfg) if t not in existing]
        retention = topic_retention_ms(cfg)
        for topic in missing:
            spec = {"num_partitions": cfg.partitions, "replication_factor": cfg.replication_factor,
                    "configs": {"retention.ms": str(retention[topic])}}
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics({topic: spec}, wait_for_metadata=True)
        return missing
    finally:
        admin.close()


def _partitions_known(producer: KafkaProducer, topic: str) -> bool:
    """Whether ``producer.send(topic, ...)`` returns without blocking. kafka-python 3
    blocks in ``send`` only to fetch a topic's metadata (its record accumulator has no
    buffer pool to wait for), so once the topic's partitions are known the call only
    appends to a batch. ``_metadata`` is the producer's cluster view; without it, the
    caller takes the worker-thread path."""
    metadata = getattr(producer, "_metadata", None)
    return metadata is not None and metadata.partitions_for_topic(topic) is not None


class _Completions:
    """Hands kafka-python's acknowledgements (delivered on its sender thread) to the
    asyncio futures waiting for them: one loop wake-up per burst of acks rather than one
    per record."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._ready: collections.deque[tuple[asyncio.Future[Ack], object]] = (
            collections.deque())
        self._scheduled = False

    def push(self, done: asyncio.Future[Ack], outcome: object) -> None:
        """Any thread; ``outcome`` is kafka-python's RecordMetadata or its exception.
        deque.append is atomic, and the drain clears the flag before it empties the
        queue, so a record pushed while a drain runs is either drained by it or
        schedules the next one."""
        self._ready.append((done, outcome))
        if not self._scheduled:
            self._scheduled = True
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        ready = self._ready
        while ready:
            done, outcome = ready.popleft()
            if done.done():  # the caller gave up (timeout, cancellation)
                continue
            if isinstance(outcome, BaseException):
                done.set_exception(
                    Unavailable(f"Kafka did not acknowledge the write: {outcome}"))
            else:
                meta = outcome
                done.set_result(Ack(meta.topic, meta.partition, meta.offset))  # type: ignore[attr-defined]


def _expire(done: asyncio.Future[Ack], timeout_s: float) -> None:
    """The acknowledgement did not come in time: the write fails as Unavailable."""
    if not done.done():
        done.set_exception(Unavailable(
            f"Kafka did not acknowledge the write within {timeout_s:.1f}s"))


class DurableProducer:
    """Idempotent, acks=all producer; ``send`` returns only after the broker's ack.

    The kafka-python producer is created lazily and re-created after failing to
    start, so the service starts and keeps serving while Kafka is unreachable.
    A record is handed to kafka-python on the event loop itself once its topic's
    partitions are known (that call cannot block then), and on a worker thread
    before (creating the producer and fetching metadata block); acknowledgements
    come back from kafka-python's sender thread in bursts (``_Completions``).
    """

    def __init__(self, cfg: KafkaConfig, on_latency: Callable[[str, float, bool], None]
                 | None = None) -> None:
        self._cfg = cfg
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()
        self._last_attempt = 0.0
        self._on_latency = on_latency
        self._completions: _Completions | None = None

    def _get(self) -> KafkaProducer:
        with self._lock:
            if self._producer is not None:
                return self._producer
            if time.monotonic() - self._last_attempt < 1.0:
                raise Unavailable("Kafka is unreachable; retry shortly")
            self._last_attempt = time.monotonic()
            try:
                self._producer = KafkaProducer(
                    bootstrap_servers=self._cfg.bootstrap_servers,
                    client_id=f"{self._cfg.client_id}-producer",
                    acks="all",
                    enable_idempotence=True,
                    linger_ms=2,
                    max_block_ms=int(self._cfg.max_block_s * 1000),
                    bootstrap_timeout_ms=int(self._cfg.max_block_s * 1000),
                    request_timeout_ms=max(1000, int(self._cfg.produce_timeout_s * 1000)),
                    reconnect_backoff_max_ms=1000,
                )
            except KafkaError as exc:
                raise Unavailable(f"Kafka is unreachable: {exc}") from exc
            return self._producer

    @staticmethod
    def _enqueue(producer: KafkaProducer, topic: str, key: bytes, value: bytes,
                 done: asyncio.Future[Ack], completions: _Completions) -> None:
        """Append the record to kafka-python's batch; its outcome completes ``done``."""
        try:
            future = producer.send(topic, key=key, value=value)
        except KafkaError as exc:
            raise Unavailable(f"Kafka did not take the write: {exc}") from exc
        future.add_callback(completions.push, done)
        future.add_errback(completions.push, done)

    def _send_blocking(self, topic: str, key: bytes, value: bytes, done: asyncio.Future[Ack],
                       completions: _Completions) -> None:
        self._enqueue(self._get(), topic, key, value, done, completions)

    async def send(self, topic: str, key: str, value: bytes) -> Ack:
        """Write one record and wait (bounded) for acks=all; Unavailable otherwise."""
        loop = asyncio.get_running_loop()
        completions = self._completions
        if completions is None or completions.loop is not loop:
            completions = self._completions = _Completions(loop)
        done: asyncio.Future[Ack] = loop.create_future()
        start = time.perf_counter()
        ok = False
        try:
            # 1. hand the record over: here when that cannot block, else on a thread
            producer = self._producer
            if producer is not None and _partitions_known(producer, topic):
                self._enqueue(producer, topic, key.encode(), value, done, completions)
            else:
                async with asyncio.timeout(self._cfg.max_block_s + 1.0):
                    await asyncio.to_thread(self._send_blocking, topic, key.encode(), value,
                                            done, completions)
            # 2. OK only after the broker's acknowledgement (acks=all), bounded by a timer
            #    that fails ``done`` (cheaper per write than an asyncio.timeout scope)
            timer = loop.call_later(self._cfg.produce_timeout_s, _expire, done,
                                    self._cfg.produce_timeout_s)
            try:
                ack = await done
            finally:
                timer.cancel()
            ok = True
            return ack
        except TimeoutError as exc:
            raise Unavailable(
                f"Kafka did not acknowledge the write within {self._cfg.produce_timeout_s:.1f}s"
            ) from exc
        finally:
            if self._on_latency is not None:
                self._on_latency(topic, time.perf_counter() - start, ok)

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush what is buffered and close."""
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.flush(timeout=timeout_s)
            finally:
                producer.close(timeout=timeout_s)


class TopicFollower(threading.Thread):
    """Reads every partition of a topic from the end (no consumer group: each
    replica sees every record) and hands each value to ``on_record``."""

    def __init__(self, cfg: KafkaConfig, topic: str, on_record: Callable[[bytes], None]) -> None:
        super().__init__(name=f"follow-{topic}", daemon=True)
        self._cfg = cfg
        self._topic = topic
        self._on_record = on_record
        self._stop_event = threading.Event()
        self.ready = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self._follow()
            except Exception:
                log.exception("following %s failed; retrying", self._topic)
                self._stop_event.wait(1.0)

    def _follow(self) -> None:
        consumer = KafkaConsumer(
            bootstrap_servers=self._cfg.bootstrap_servers,
            client_id=f"{self._cfg.client_id}-follower",
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=self._cfg.fetch_max_wait_ms,
            bootstrap_timeout_ms=int(self._cfg.bootstrap_timeout_s * 1000),
        )
        try:
            partitions = consumer.partitions_for_topic(self._topic)
            while not partitions and not self._stop_event.wait(0.5):
                partitions = consumer.partitions_for_topic(self._topic)
            tps = [TopicPartition(self._topic, p) for p in sorted(partitions or [])]
            consumer.assign(tps)
            consumer.seek_to_end(*tps)
            for tp in tps:
                consumer.position(tp)
            self.ready.set()
            while not self._stop_event.is_set():
                for records in consumer.poll(timeout_ms=200).values():
                    for record in records:
                        self._on_record(record.value)
        finally:
            consumer.close()
