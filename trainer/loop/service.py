"""The continuous trainer (``python -m trainer.loop.service``).

An ingest thread journals ``generations`` and ``feedback`` (see consumer.py);
the main loop picks the next due user among the partitions this process owns
(schedule.py), runs that user's turn (learner.py), records the outcome for
GetUserStatus, and repeats. SIGTERM/SIGINT stop it between turns.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from pathlib import Path

from kafka import KafkaProducer
from prometheus_client import start_http_server

from services.contract import config as config_mod
from services.contract.records import AdapterUpdateRecord
from services.contract.store import AdapterStore
from trainer.config import TrainerConfig
from trainer.data.examples import build_examples
from trainer.ingest.consumer import Ingest
from trainer.ingest.journal import Journal
from trainer.loop.learner import Learner
from trainer.loop.schedule import pick_next
from trainer.metrics import TrainerMetrics

log = logging.getLogger("personalize.trainer")


def journal_path(cfg: TrainerConfig) -> Path:
    return Path(cfg.state_dir) / "journal.sqlite"


class TrainerService:
    def __init__(self, cfg: TrainerConfig) -> None:
        self.cfg = cfg
        k = cfg.kafka
        self.metrics = TrainerMetrics(generations_topic=k.generations_topic,
                                      feedback_topic=k.feedback_topic)
        self.store = AdapterStore(cfg.adapter_store)
        self.ingest = Ingest(cfg, Journal(journal_path(cfg), k.generations_topic,
                                          k.feedback_topic), self.metrics)
        self.journal = Journal(journal_path(cfg), k.generations_topic, k.feedback_topic)
        self._producer: KafkaProducer | None = None
        self.learner = Learner(cfg, self.store, self.metrics, self._announce)
        self.stop_event = threading.Event()
        self._last_trained: dict[str, float] = {}

    def _announce(self, record: AdapterUpdateRecord) -> None:
        if self._producer is None:
            self._producer = KafkaProducer(bootstrap_servers=self.cfg.kafka.bootstrap_servers,
                                           acks="all", enable_idempotence=True,
                                           client_id=f"{self.cfg.kafka.client_id}-publisher")
        self._producer.send(self.cfg.kafka.adapter_updates_topic, key=record.user_id.encode(),
                            value=record.to_json()).get(timeout=30)

    def run(self) -> int:
        self.ingest.start()
        while not self.stop_event.is_set():
            if not self.ingest.is_alive():
                log.error("ingest thread died: %r", self.ingest.error)
                return 1
            if not self.cfg.train or not self.step():
                self.stop_event.wait(self.cfg.schedule.idle_sleep_s)
        self.ingest.stop()
        self.ingest.join(timeout=10)
        if self._producer is not None:
            self._producer.close(timeout=10)
        return 0

    def step(self) -> bool:
        """Run one due user's turn; False when nobody is due."""
        pending = self.journal.pending_users(self.ingest.assigned)
        self.metrics.users_tracked.set(self.journal.user_count())
        user = pick_next(pending, self._last_trained, self.cfg.schedule)
        if user is None:
            return False
        joined = self.journal.joined(user)
        oldest_new = pending[user][1]
        ex = build_examples(user, joined, self.cfg.preferences)
        result = self.learner.turn(user, ex, self.stop_event.is_set)
        if result.interrupted:
            return True
        self.store.write_status(user, self.learner.status(user, ex, result))
        self.journal.mark_trained(user, ex.through_seq)
        self._last_trained[user] = time.monotonic()
        if result.published_version:
            self.metrics.feedback_to_publish.observe(oldest_new)
        log.info("user %s: %s", user, result.decision)
        return True


def main(argv: list[str] | None = None) -> int:
    cfg = config_mod.parse_entry_point(TrainerConfig, "trainer",
                                       "personalize continuous trainer", argv)
    if cfg.torch_threads:
        import torch

        torch.set_num_threads(cfg.torch_threads)
    service = TrainerService(cfg)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: service.stop_event.set())
    if cfg.metrics_port:
        start_http_server(cfg.metrics_port, cfg.metrics_host, registry=service.metrics.registry)
    log.info("trainer up: group %s, store %s, metrics :%d", cfg.group_id,
             service.store.root, cfg.metrics_port)
    return service.run()


if __name__ == "__main__":
    sys.exit(main())
