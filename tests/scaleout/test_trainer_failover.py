"""Two trainers in one consumer group on the tiny model; one is killed with SIGKILL
mid-turn (issue 15, the rest of the end-to-end test; the stack's own two-replica
start is covered by test_two_replicas_two_trainers.py).

Topology: the session's tiny engine behind two server replicas of this test's own
topics and adapter store, and two real trainer processes
(``python -m trainer.loop.service``) in one group. Users are chosen one per partition
of the 3; the *victim* is the trainer that owns two partitions, the *survivor* the one
that owns the third.

1. Round 1: every user ranks 4 answers on replica A; each trainer publishes v1 of the
   users of its partitions, both replicas serve each of them, and the two journals
   split the acknowledged events between them.
2. Poison: a user of the survivor's partition whose latest adapter version in the
   store is corrupt: a complete-looking version directory (manifest, adapter config)
   whose weights file is not a safetensors file, as a torn copy or a foreign writer
   on the shared volume would leave it. The trainer's turn for that user raises when
   it loads the user's latest adapter (the real PEFT load path); the survivor counts
   the failure, quarantines the user and goes on training the others.
3. Round 2: a victim user ranks 4 more answers; once the victim's metrics show it
   started that turn (preference pairs built, nothing published yet) it is killed
   with SIGKILL; the other users then rank 4 more too (acknowledged while nobody
   owns the victim's partitions).
4. The group rebalances: the survivor owns all partitions, replays the victim's from
   the beginning and publishes the next version of each victim user from the version
   that was latest at the kill, trained on that user's complete data.

Checked at the end: every user's versions form one chain (each version's parent is
the previous version: nothing was published from a stale parent); each user's latest
manifest counts exactly the events acknowledged for that user; the survivor's journal
holds every acknowledged event once; the victim's journal holds only events of its
own partitions; both replicas serve the survivor's versions.
"""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from kafka.partitioner.default import murmur2

from personalize.v1 import assistant_pb2 as pb
from personalize.v1 import assistant_pb2_grpc
from services.contract.store import MANIFEST_FILE, AdapterManifest, AdapterStore
from services.devstack.broker import free_port
from tests.conftest import make_server_config
from tests.services.helpers import generate, wait_for_version
from tests.support.topics import isolated_kafka, trainer_topic_env
from tests.support.trainer_proc import ALWAYS_PUBLISH, journaled_ids, start_trainer, stop_all

PARTITIONS = 3
RANKINGS = 4  # ALWAYS_PUBLISH makes a user due at 4 new events


def partition_of(user: str) -> int:
    """The partition Kafka's default partitioner gives the key ``user``."""
    return (murmur2(user.encode()) & 0x7FFFFFFF) % PARTITIONS


def user_in(partition: int, prefix: str) -> str:
    return next(u for i in range(1000) if partition_of(u := f"{prefix}-{i}") == partition)


def owned_partitions(log: Path) -> set[int]:
    """The last partitions a trainer's log says it owns."""
    found = re.findall(r"owning partitions \[([\d, ]*)\]", log.read_text(errors="replace"))
    return {int(p) for p in found[-1].split(",") if p.strip()} if found else set()


def metric(port: int, name: str) -> float:
    """A trainer metric's value (sum over label sets) from its Prometheus endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.split("{")[0].split(" ")[0] == name)


def plant_corrupt_version(store: AdapterStore, user: str, base_model: str) -> None:
    """``<store>/<user>/v1`` with a manifest and a LoRA config, but weights that are not
    a safetensors file (their sha256 is the manifest's: only loading them fails)."""
    from peft import LoraConfig

    from services.contract.store import WEIGHTS_FILE, sha256_file

    vdir = store.version_dir(user, "v1")
    vdir.mkdir(parents=True)
    LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]).save_pretrained(vdir)
    (vdir / WEIGHTS_FILE).write_bytes(b"\x00\x01 torn copy " * 64)
    manifest = AdapterManifest(user_id=user, version="v1", base_model=base_model,
                               sha256=sha256_file(vdir / WEIGHTS_FILE), created_at=time.time())
    (vdir / MANIFEST_FILE).write_text(json.dumps(dataclasses.asdict(manifest)))


def wait_until(what: str, done: Callable[[], bool], alive: list[subprocess.Popen[bytes]],
               logs: list[Path], timeout_s: float = 240.0, every_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        for proc, log in zip(alive, logs, strict=True):
            assert proc.poll() is None, f"trainer died:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"{what}:\n" + "\n".join(
            log.read_text()[-2500:] for log in logs)
        time.sleep(every_s)


@pytest.fixture()
def failover_server(loop_thread, tiny_engine, broker, engine_config, tmp_path: Path):  # type: ignore[no-untyped-def]
    from services.server.main import AssistantServer

    kafka = isolated_kafka(broker.bootstrap, f"failover-{uuid.uuid4().hex[:6]}")
    cfg = make_server_config(tmp_path / "store", broker.bootstrap, engine_config, kafka=kafka)
    replicas = [loop_thread.call(AssistantServer, cfg, tiny_engine) for _ in range(2)]
    for srv in replicas:
        loop_thread.run(srv.start())
    yield replicas
    for srv in replicas:
        loop_thread.run(srv.stop())


def test_a_killed_trainers_users_move_to_the_survivor(failover_server, broker,  # type: ignore[no-untyped-def]
                                                      tiny_model_dir: Path,
                                                      tmp_path: Path) -> None:
    failover_server, replica_b = failover_server
    kafka = failover_server.cfg.kafka
    store: AdapterStore = failover_server.store
    model_id = failover_server.engine.model_id
    group, tag = f"failover-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex[:4]
    names, ports = ("a", "b"), (free_port(), free_port())
    logs = [tmp_path / f"trainer-{n}.log" for n in names]
    dirs = [tmp_path / f"state-{n}" for n in names]
    procs = [start_trainer(broker.bootstrap, dirs[i], Path(failover_server.cfg.adapter_store),
                           group, logs[i], policy_model=str(tiny_model_dir),
                           policy_model_id=model_id, metrics_port=str(ports[i]),
                           torch_threads="1",
                           **{**ALWAYS_PUBLISH, **trainer_topic_env(kafka)})
             for i in range(2)]
    acked: dict[str, list[str]] = {}

    with grpc.insecure_channel(f"127.0.0.1:{failover_server.port}") as ch, \
            grpc.insecure_channel(f"127.0.0.1:{replica_b.port}") as ch_b:
        stub = assistant_pb2_grpc.AssistantStub(ch)
        stubs = (stub, assistant_pb2_grpc.AssistantStub(ch_b))

        def rank(user: str, n: int = RANKINGS) -> None:
            for i in range(n):
                out = generate(stub, user, f"question {i} of {user}", num_candidates=3,
                               max_tokens=6, temperature=1.0)
                ranked = [out.response_ids[c] for c in (2, 0, 1)]
                reply = stub.SubmitFeedback(pb.FeedbackRequest(
                    user_id=user, ranking=pb.Ranking(response_ids=ranked)))
                acked.setdefault(user, []).append(reply.feedback_id)

        try:
            # 0. the group splits the 3 partitions 2 + 1
            wait_until("partitions never split", lambda: (
                (o := [owned_partitions(log) for log in logs])[0] | o[1]
                == set(range(PARTITIONS)) and not o[0] & o[1]), procs, logs)
            owned = [owned_partitions(log) for log in logs]
            v = 0 if len(owned[0]) == 2 else 1  # the victim owns two partitions
            s = 1 - v
            users = {p: user_in(p, f"fo-{tag}") for p in range(PARTITIONS)}
            victim_users = [users[p] for p in sorted(owned[v])]
            [own_user] = [users[p] for p in owned[s]]
            poison = user_in(next(iter(owned[s])), f"poison-{tag}")
            plant_corrupt_version(store, poison, model_id)

            # 1. round 1: every user (the poison user too) is due once
            for user in [*users.values(), poison]:
                rank(user)

            def round_one_done() -> bool:
                return (all(store.latest(u) == "v1" for u in users.values())
                        and metric(ports[s], "personalize_trainer_turn_failures_total") >= 1)

            wait_until("round 1 never published v1 everywhere", round_one_done, procs, logs)
            for user in users.values():  # published by either trainer, served by both
                for replica in stubs:
                    wait_for_version(replica, user, "v1")
            journals = [journaled_ids(d, [*users.values(), poison]) for d in dirs]
            all_acked = [f for ids in acked.values() for f in ids]
            assert sorted(journals[0] + journals[1]) == sorted(all_acked)
            assert not set(journals[0]) & set(journals[1]), "an event in two trainers' data"
            assert metric(ports[s], "personalize_trainer_users_quarantined") == 1
            assert store.versions(poison) == ["v1"]  # nothing published over the bad version

            # 2. round 2: SIGKILL the victim once it started the turn of its first user
            pairs = metric(ports[v], "personalize_trainer_preference_pairs_built_total")
            published = metric(ports[v], "personalize_trainer_adapters_published_total")
            rank(victim_users[0])
            wait_until("the victim never started its round-2 turn", lambda: metric(
                ports[v], "personalize_trainer_preference_pairs_built_total") > pairs,
                procs, logs, every_s=0.05)
            assert metric(ports[v], "personalize_trainer_adapters_published_total") == published
            procs[v].send_signal(signal.SIGKILL)
            procs[v].wait()
            before = {u: store.latest(u) for u in victim_users}
            for user in [*victim_users[1:], own_user]:
                rank(user)
            survivor, slog = [procs[s]], [logs[s]]

            # 3. the survivor takes the victim's partitions and catches up with everyone
            def caught_up() -> bool:
                return (owned_partitions(logs[s]) == set(range(PARTITIONS))
                        and all(_latest_count(store, u) == len(acked[u])
                                for u in users.values()))

            wait_until("the survivor never caught up", caught_up, survivor, slog)
            assert metric(ports[s], "personalize_trainer_users_quarantined") == 1
            assert metric(ports[s], "personalize_trainer_turn_failures_total") >= 1
        finally:
            stop_all(procs)

        # the next version of each victim user descends from the one latest at the kill
        for user in victim_users:
            assert before[user] == "v1"
            assert store.manifest(user, "v2").parent_version == "v1"
        # no version of anyone was published from a stale parent
        for user in [*users.values(), poison]:
            versions = store.versions(user)
            parents = [store.manifest(user, ver).parent_version for ver in versions]
            assert parents == ["", *versions[:-1]], (user, versions, parents)
            assert store.manifest(user, versions[-1]).feedback_count == (
                len(acked[user]) if user != poison else 0)
        # every acknowledged event is in the survivor's training data exactly once; the
        # victim's journal held only its own partitions' events, each once
        everyone = [*users.values(), poison]
        survivor_ids = journaled_ids(dirs[s], everyone)
        assert sorted(survivor_ids) == sorted(f for ids in acked.values() for f in ids)
        victim_ids = journaled_ids(dirs[v], everyone)
        assert len(victim_ids) == len(set(victim_ids))
        assert set(victim_ids) <= {f for u in victim_users for f in acked[u]}
        # the poison user stayed quarantined while the others were trained
        assert store.versions(poison) == ["v1"]
        assert f"user {poison}: turn failed" in logs[s].read_text()
        assert all(len(store.versions(u)) >= 2 for u in users.values())
        for user in users.values():
            for replica in stubs:
                wait_for_version(replica, user, store.latest(user) or "")


def _latest_count(store: AdapterStore, user: str) -> int:
    """The feedback count of the user's latest version (-1: no version yet)."""
    latest = store.latest(user)
    return store.manifest(user, latest).feedback_count if latest else -1
