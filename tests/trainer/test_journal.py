from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from services.contract.records import FeedbackRecord, GenerationRecord
from trainer.ingest.journal import Consumed, Journal

G, F = "generations", "feedback"


def gen(rid: str, user: str = "alice", group: str = "g1") -> bytes:
    return GenerationRecord(
        response_id=rid, group_id=group, user_id=user, candidate_index=0, num_candidates=2,
        messages=[{"role": "user", "content": "hi"}], prompt_token_ids=[1],
        completion=f"text {rid}", completion_token_ids=[2], finish_reason="stop",
        adapter_version="", base_model="m", sampling={}, created_at=1.0).to_json()


def fb(fid: str, ids: list[str], user: str = "alice", group: str = "g1") -> bytes:
    return FeedbackRecord(feedback_id=fid, user_id=user, labeler_id=user, kind="ranking",
                          response_ids=ids, group_id=group, created_at=2.0).to_json()


class Feed:
    def __init__(self) -> None:
        self.offsets: dict[tuple[str, int], int] = {}

    def __call__(self, topic: str, value: bytes, partition: int = 0) -> Consumed:
        off = self.offsets.get((topic, partition), 0)
        self.offsets[(topic, partition)] = off + 1
        return Consumed(topic, partition, off, b"alice", value)


def test_join_dedupe_and_positions(tmp_path: Path) -> None:
    j, feed = Journal(tmp_path / "j.db", G, F), Feed()
    # feedback may be read before its generations: it waits, then joins
    assert j.apply([feed(F, fb("f1", ["a", "b"]))]) == 0, "nothing joined yet"
    assert j.feedback_ids() == [] and j.counts()["pending"] == 1
    assert j.apply([feed(G, gen("a")), feed(G, gen("b"))]) == 1
    assert j.feedback_ids() == ["f1"]
    # a retried feedback id and a re-delivered batch are used once
    assert j.apply([feed(F, fb("f1", ["a", "b"])), feed(F, fb("f2", ["b", "a"]))]) == 1
    assert j.feedback_ids("alice") == ["f1", "f2"]
    assert j.positions() == {(F, 0): 3, (G, 0): 2}
    [first, second] = j.joined("alice")
    assert first.event.response_ids == ("a", "b") and second.event.response_ids == ("b", "a")
    assert first.generations["a"].completion == "text a"
    # survives a reopen (what a restart sees)
    j.close()
    j2 = Journal(tmp_path / "j.db", G, F)
    assert j2.feedback_ids() == ["f1", "f2"] and j2.positions()[(F, 0)] == 3


def test_bad_records_and_mismatch_and_expiry(tmp_path: Path) -> None:
    j, feed = Journal(tmp_path / "j.db", G, F), Feed()
    batch = [feed(F, b"{not json"), feed(G, gen("x", user="bob", group="g9")),
             feed(F, fb("f3", ["x", "y"], group="g9")), feed(F, fb("f4", ["zz", "yy"]))]
    errors: list = []
    assert j.apply(batch, errors.extend) == 0
    assert [e.record.offset for e in errors] == [0] and "unparseable" in errors[0].reason
    assert j.apply([feed(G, gen("y", user="alice", group="g9"))]) == 0, "mismatch: not joined"
    counts = j.counts()
    assert counts["dead:mismatch"] == 1, "alice cannot rate bob's response"
    assert j.positions()[(F, 0)] == 3, "the unparseable record is consumed past"
    time.sleep(0.01)
    expired = j.expire_pending(older_than_s=0.0)
    assert [u for u, _ in expired] == ["alice"] and j.counts()["dead:unjoinable"] == 1


def test_pending_users_and_mark_trained(tmp_path: Path) -> None:
    j, feed = Journal(tmp_path / "j.db", G, F), Feed()
    j.apply([feed(G, gen("a")), feed(G, gen("b")), feed(F, fb("f1", ["a", "b"]), partition=2),
             feed(F, fb("f2", ["b", "a"]), partition=2)])
    assert j.pending_users()["alice"][0] == 2
    assert j.pending_users(partitions={0, 1}) == {}
    j.mark_trained("alice", j.joined("alice")[-1].seq)
    assert j.pending_users() == {}
    j.apply([feed(F, fb("f5", ["a", "b"]), partition=2)])
    assert j.pending_users()["alice"][0] == 1


def test_user_count_is_every_user_with_feedback(tmp_path: Path) -> None:
    j, feed = Journal(tmp_path / "j.db", G, F), Feed()
    assert j.user_count() == 0
    joined = j.apply([feed(G, gen("a")), feed(G, gen("b")), feed(F, fb("f1", ["a", "b"])),
                      feed(F, fb("f2", ["a", "b"], user="bob")),  # bob rates alice's: dead
                      feed(F, fb("f3", ["y", "z"], user="carol")),  # pending
                      feed(G, gen("q", user="dave"))])  # generations only: no feedback
    assert joined == 1 and j.user_count() == 3
    j.mark_trained("alice", j.joined("alice")[-1].seq)
    j.apply([feed(F, fb("f1", ["a", "b"])), feed(F, fb("f4", ["b", "a"]))])  # a retry, one more
    assert j.user_count() == 3, "trained users and repeat feedback still count once"
    # a journal written before the users table existed is counted on open
    j.close()
    with sqlite3.connect(tmp_path / "j.db") as db:
        db.execute("DROP TABLE users")
    assert Journal(tmp_path / "j.db", G, F).user_count() == 3


def test_a_lost_partition_is_released_and_read_again_from_the_start(tmp_path: Path) -> None:
    """The journal keeps only the assigned partitions: the rows and positions of the
    others go (their users are returned, for the loop to forget)."""
    j = Journal(tmp_path / "j.db", G, F)
    batch = [Consumed(G, 0, 0, b"alice", gen("a", user="alice", group="ga")),
             Consumed(G, 1, 0, b"bob", gen("b", user="bob", group="gb")),
             Consumed(G, 0, 1, b"alice", gen("a2", user="alice", group="ga")),
             Consumed(G, 1, 1, b"bob", gen("b2", user="bob", group="gb")),
             Consumed(F, 0, 0, b"alice", fb("fa", ["a", "a2"], user="alice", group="ga")),
             Consumed(F, 1, 0, b"bob", fb("fb", ["b", "b2"], user="bob", group="gb"))]
    j.apply(batch)
    j.mark_trained("bob", 10)
    assert j.release({(G, 0), (F, 0), (G, 1), (F, 1)}) == []
    assert j.release({(G, 0), (F, 0)}) == ["bob"]
    assert j.feedback_ids() == ["fa"] and j.counts()["generations"] == 2
    assert j.positions() == {(G, 0): 2, (F, 0): 1}
    assert j.user_count() == 1 and j.trained_users() == set()
    # assigned again: read from the beginning, the same rows come back once
    j.apply([c for c in batch if c.partition == 1])
    assert j.feedback_ids() == ["fa", "fb"] and j.counts()["generations"] == 4


def test_a_journal_from_before_the_partition_column_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(str(path))
    db.execute("CREATE TABLE generations (response_id TEXT PRIMARY KEY, user_id TEXT NOT "
               "NULL, group_id TEXT NOT NULL, body TEXT NOT NULL)")
    db.execute("INSERT INTO generations VALUES ('a', 'alice', 'ga', ?)",
               (gen("a", group="ga").decode(),))
    db.commit()
    db.close()
    j = Journal(path, G, F)
    j.apply([Consumed(F, 0, 0, b"alice", fb("fa", ["a", "a2"], group="ga")),
             Consumed(G, 0, 0, b"alice", gen("a2", group="ga"))])
    assert j.feedback_ids() == ["fa"] and j.counts()["generations"] == 2
    assert j.release(set()) == ["alice"]
    assert j.counts()["generations"] == 0, "the older row of a released user goes too"
