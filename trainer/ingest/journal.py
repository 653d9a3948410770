"""The trainer's durable, derived state: consumed generations and feedback, joined.

Kafka is the source of truth; the journal is a materialised view of the
partitions this process owns. Each polled batch is written in ONE SQLite
transaction together with the next offset of every partition it came from, so
after a crash the consumer resumes exactly where the durable data ends:
nothing acknowledged is lost and nothing is counted twice (feedback is also
unique by (user_id, feedback_id), so a client's retry is used once). A
partition the journal has never seen is read from the beginning, which
rebuilds the state after a rebalance or on a new host.

An erasure (a tombstone on the feedback topic, after every feedback record it
erases) deletes the user's rows in the same transaction and is remembered, so a
generation served before it that arrives later is not stored either; a rebuild
from the topics meets the tombstone again and ends the same. Deleted rows are
overwritten (``secure_delete``) and the write-ahead log is truncated once the
trainer has dropped the user's in-memory state (``mark_erasure_applied``).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence, Set
from dataclasses import dataclass
from pathlib import Path

from services.contract.errors import InvalidArgument
from services.contract.ids import validate_user_id
from services.contract.records import (
    ErasureRecord,
    FeedbackRecord,
    GenerationRecord,
    Record,
    RecordError,
    parse_feedback_topic,
)
from trainer.data.preferences import FeedbackEvent

_SCHEMA = """
CREATE TABLE IF NOT EXISTS generations (
  response_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, group_id TEXT NOT NULL,
  body TEXT NOT NULL, partition INTEGER);
CREATE TABLE IF NOT EXISTS feedback (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL, feedback_id TEXT NOT NULL,
  partition INTEGER NOT NULL, body TEXT NOT NULL, state TEXT NOT NULL,
  received_at REAL NOT NULL, UNIQUE (user_id, feedback_id));
CREATE INDEX IF NOT EXISTS feedback_pending ON feedback (state, received_at);
CREATE TABLE IF NOT EXISTS positions (
  topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
  PRIMARY KEY (topic, partition));
CREATE TABLE IF NOT EXISTS trained (user_id TEXT PRIMARY KEY, through_seq INTEGER NOT NULL,
  at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS users (user_id TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS erasures (user_id TEXT PRIMARY KEY, erased_at REAL NOT NULL,
  applied INTEGER NOT NULL) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class Consumed:
    """One record as polled (topic, partition, offset, key, value)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


@dataclass(frozen=True)
class DeadLetter:
    record: Consumed
    reason: str


@dataclass(frozen=True)
class Joined:
    """A feedback event with the generations it rates, ready for preference data."""

    seq: int
    event: FeedbackEvent
    generations: dict[str, GenerationRecord]


class Journal:
    def __init__(self, path: str | Path, generations_topic: str, feedback_topic: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA secure_delete=ON")  # an erased user's rows are overwritten
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(generations)")}
        if "partition" not in columns:  # a journal written before the column
            self._db.execute("ALTER TABLE generations ADD COLUMN partition INTEGER")
        if (not self._db.execute("SELECT 1 FROM users LIMIT 1").fetchone()
                and self._db.execute("SELECT 1 FROM feedback LIMIT 1").fetchone()):
            # a journal written before the users table: fill it once
            self._db.execute("INSERT OR IGNORE INTO users SELECT DISTINCT user_id FROM feedback")
        self._gen_topic, self._fb_topic = generations_topic, feedback_topic

    def close(self) -> None:
        self._db.close()

    # -- ingest ------------------------------------------------------------------------
    def apply(self, batch: Sequence[Consumed],
              dead_letter: Callable[[list[DeadLetter]], None] = lambda _: None) -> int:
        """Durably add a polled batch and advance its partitions' positions;
        returns how many feedback events it joined with their generations.

        Each record is parsed once. Unparseable ones are handed to
        ``dead_letter`` BEFORE the transaction (the caller writes them to the
        dead-letter topic and waits for the ack), so a crash in between only
        repeats a dead letter and never loses one; they are then skipped.
        """
        parsed, dead = self._parse(batch)
        if dead:
            dead_letter(dead)
        now = time.time()
        cur = self._db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            for r in batch:
                record = parsed.get((r.topic, r.partition, r.offset))
                if isinstance(record, GenerationRecord):
                    # one served before its user's erasure is never stored
                    if record.created_at > self._erased_at(cur, record.user_id):
                        cur.execute("INSERT OR IGNORE INTO generations VALUES (?, ?, ?, ?, ?)",
                                    (record.response_id, record.user_id, record.group_id,
                                     r.value.decode(), r.partition))
                elif isinstance(record, FeedbackRecord):
                    cur.execute("INSERT OR IGNORE INTO feedback (user_id, feedback_id, partition,"
                                " body, state, received_at) VALUES (?, ?, ?, ?, 'pending', ?)",
                                (record.user_id, record.feedback_id, r.partition,
                                 r.value.decode(), now))
                    cur.execute("INSERT OR IGNORE INTO users VALUES (?)", (record.user_id,))
                elif isinstance(record, ErasureRecord):
                    _erase(cur, record)
                cur.execute(
                    "INSERT INTO positions VALUES (?, ?, ?) ON CONFLICT (topic, partition) "
                    "DO UPDATE SET next_offset = MAX(next_offset, excluded.next_offset)",
                    (r.topic, r.partition, r.offset + 1))
            joined = self._join_pending(cur)
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        return joined

    def _parse(self, batch: Iterable[Consumed]
               ) -> tuple[dict[tuple[str, int, int], Record], list[DeadLetter]]:
        parsed: dict[tuple[str, int, int], Record] = {}
        dead: list[DeadLetter] = []
        for r in batch:
            try:
                if r.topic == self._gen_topic:
                    record: Record = GenerationRecord.from_json(r.value)
                elif r.topic == self._fb_topic:
                    record = parse_feedback_topic(r.value)
                    if isinstance(record, FeedbackRecord):
                        _to_event(record)  # validates the feedback's shape
                else:
                    dead.append(DeadLetter(r, f"unexpected topic {r.topic}"))
                    continue
                _check_ids(record)  # user ids reach the adapter store's paths
            except (RecordError, ValueError, TypeError, InvalidArgument) as exc:
                dead.append(DeadLetter(r, f"unparseable: {exc}"))
                continue
            parsed[(r.topic, r.partition, r.offset)] = record
        return parsed, dead

    def _generations(self, cur: sqlite3.Cursor | sqlite3.Connection, columns: str,
                     response_ids: Sequence[str]) -> list[tuple[str, ...]]:
        marks = ",".join("?" * len(response_ids))
        return cur.execute(f"SELECT {columns} FROM generations WHERE response_id IN ({marks})",
                           list(response_ids)).fetchall()

    def _join_pending(self, cur: sqlite3.Cursor) -> int:
        joined = 0
        rows = cur.execute("SELECT seq, body FROM feedback WHERE state = 'pending'").fetchall()
        for seq, body in rows:
            record = FeedbackRecord.from_json(body.encode())
            found = self._generations(cur, "user_id, group_id", record.response_ids)
            if len(found) < len(record.response_ids):
                continue
            ok = all(u == record.user_id and g == record.group_id for u, g in found)
            cur.execute("UPDATE feedback SET state = ? WHERE seq = ?",
                        ("joined" if ok else "dead:mismatch", seq))
            joined += ok
        return joined

    def expire_pending(self, older_than_s: float) -> list[tuple[str, str]]:
        """Feedback whose generations never arrived: mark dead, return (user, body)."""
        cutoff = time.time() - older_than_s
        cur = self._db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        rows = cur.execute("SELECT seq, user_id, body FROM feedback WHERE state = 'pending' "
                           "AND received_at < ?", (cutoff,)).fetchall()
        cur.executemany("UPDATE feedback SET state = 'dead:unjoinable' WHERE seq = ?",
                        [(seq,) for seq, _, _ in rows])
        cur.execute("COMMIT")
        return [(user, body) for _, user, body in rows]

    @staticmethod
    def _erased_at(cur: sqlite3.Cursor | sqlite3.Connection, user_id: str) -> float:
        row = cur.execute("SELECT erased_at FROM erasures WHERE user_id = ?",
                          (user_id,)).fetchone()
        return 0.0 if row is None else float(row[0])

    def erased_at(self, user_id: str) -> float:
        """Unix seconds of the user's latest erasure read from the topic (0.0: none):
        what a turn's data postdates, so the store refuses what it would publish if a
        later erasure happened meanwhile."""
        return self._erased_at(self._db, user_id)

    def erasures_to_apply(self) -> list[tuple[str, float]]:
        """(user, erased_at) of erasures whose in-memory part is not yet done."""
        return [(u, float(t)) for u, t in self._db.execute(
            "SELECT user_id, erased_at FROM erasures WHERE applied = 0 ORDER BY erased_at")]

    def mark_erasure_applied(self, user_id: str, erased_at: float) -> None:
        """The trainer dropped the user's state for the erasure at ``erased_at``; the
        write-ahead log, which may still hold the deleted rows, is truncated."""
        self._db.execute("UPDATE erasures SET applied = 1 WHERE user_id = ? AND erased_at = ?",
                         (user_id, erased_at))
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def release(self, keep: Set[tuple[str, int]]) -> list[str]:
        """Delete the rows of every partition the journal holds but ``keep`` (the
        consumer's new assignment) does not, with their positions: a trainer keeps only
        its own partitions' data, so an event is in exactly one trainer's data, and an
        erasure read by the partition's new owner leaves no copy here. A partition
        assigned again later is read from the beginning. Returns the users released."""
        cur = self._db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            gone = [(t, p) for t, p in cur.execute("SELECT topic, partition FROM positions")
                    if (t, p) not in keep]
            released: list[str] = []
            for topic, partition in gone:
                if topic == self._fb_topic:
                    users = [u for (u,) in cur.execute(
                        "SELECT DISTINCT user_id FROM feedback WHERE partition = ?",
                        (partition,))]
                    cur.executemany("DELETE FROM generations WHERE user_id = ? AND "
                                    "partition IS NULL", [(u,) for u in users])  # older rows
                    cur.execute("DELETE FROM feedback WHERE partition = ?", (partition,))
                    for table in ("trained", "users"):
                        cur.executemany(f"DELETE FROM {table} WHERE user_id = ?",
                                        [(u,) for u in users])
                    released += users
                elif topic == self._gen_topic:
                    cur.execute("DELETE FROM generations WHERE partition = ?", (partition,))
                cur.execute("DELETE FROM positions WHERE topic = ? AND partition = ?",
                            (topic, partition))
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        return released

    def positions(self) -> dict[tuple[str, int], int]:
        return {(t, p): o for t, p, o in self._db.execute("SELECT * FROM positions")}

    # -- reads for training ---------------------------------------------------------
    def joined(self, user_id: str) -> list[Joined]:
        rows = self._db.execute("SELECT seq, body FROM feedback WHERE user_id = ? AND "
                                "state = 'joined' ORDER BY seq", (user_id,)).fetchall()
        out = []
        for seq, body in rows:
            record = FeedbackRecord.from_json(body.encode())
            gens = self._generations(self._db, "response_id, body", record.response_ids)
            out.append(Joined(seq, _to_event(record),
                              {rid: GenerationRecord.from_json(b.encode()) for rid, b in gens}))
        return out

    def pending_users(self, partitions: Set[int] | None = None) -> dict[str, tuple[int, float]]:
        """Users with joined feedback newer than their last training:
        user -> (new events, seconds since the oldest of them arrived)."""
        rows = self._db.execute(
            "SELECT f.user_id, f.partition, COUNT(*), MIN(f.received_at) FROM feedback f "
            "LEFT JOIN trained t ON t.user_id = f.user_id WHERE f.state = 'joined' "
            "AND f.seq > COALESCE(t.through_seq, 0) GROUP BY f.user_id, f.partition").fetchall()
        now = time.time()
        return {u: (n, now - oldest) for u, p, n, oldest in rows
                if partitions is None or p in partitions}

    def trained_users(self, partitions: Set[int] | None = None) -> set[str]:
        """Users with a completed turn (marked trained) whose feedback partition is in
        ``partitions`` (None: any): those the loop may train on without new feedback."""
        rows = self._db.execute(
            "SELECT t.user_id, (SELECT f.partition FROM feedback f WHERE f.user_id = t.user_id"
            " ORDER BY f.seq DESC LIMIT 1) FROM trained t").fetchall()
        return {u for u, p in rows if p is not None and (partitions is None or p in partitions)}

    def partition_of(self, user_id: str) -> int | None:
        """The feedback partition of the user's latest event (records are keyed by user
        id, so all of a user's events share one); None for a user with none."""
        row = self._db.execute("SELECT partition FROM feedback WHERE user_id = ? ORDER BY seq "
                               "DESC LIMIT 1", (user_id,)).fetchone()
        return None if row is None else int(row[0])

    def mark_trained(self, user_id: str, through_seq: int) -> None:
        self._db.execute("INSERT INTO trained VALUES (?, ?, ?) ON CONFLICT (user_id) DO UPDATE "
                         "SET through_seq = excluded.through_seq, at = excluded.at",
                         (user_id, through_seq, time.time()))

    def feedback_ids(self, user_id: str | None = None) -> list[str]:
        """Every feedback id in the training data (joined), in arrival order."""
        query = "SELECT feedback_id FROM feedback WHERE state = 'joined'"
        args: tuple[str, ...] = ()
        if user_id is not None:
            query, args = query + " AND user_id = ?", (user_id,)
        return [r[0] for r in self._db.execute(query + " ORDER BY seq", args)]

    def user_count(self) -> int:
        """Users with any feedback in the journal (a count of the small users table)."""
        return self._db.execute("SELECT COUNT(*) FROM users").fetchone()[0]

    def counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT state, COUNT(*) FROM feedback GROUP BY state")
        out = {state: n for state, n in rows}
        out["generations"] = self._db.execute("SELECT COUNT(*) FROM generations").fetchone()[0]
        return out


def _erase(cur: sqlite3.Cursor, record: ErasureRecord) -> None:
    """Delete the user's rows: all its feedback (the tombstone follows every feedback
    record of the user in the partition) and its generations served up to the erasure
    (later ones may already be here: the generations topic is read independently)."""
    user = record.user_id
    cur.execute("DELETE FROM feedback WHERE user_id = ?", (user,))
    rows = cur.execute("SELECT response_id, body FROM generations WHERE user_id = ?",
                       (user,)).fetchall()
    cur.executemany("DELETE FROM generations WHERE response_id = ?",
                    [(rid,) for rid, body in rows
                     if GenerationRecord.from_json(body.encode()).created_at <= record.erased_at])
    cur.execute("DELETE FROM trained WHERE user_id = ?", (user,))
    cur.execute("DELETE FROM users WHERE user_id = ?", (user,))
    cur.execute("INSERT INTO erasures VALUES (?, ?, 0) ON CONFLICT (user_id) DO UPDATE SET "
                "erased_at = MAX(erased_at, excluded.erased_at), applied = 0",
                (user, record.erased_at))


def _to_event(record: FeedbackRecord) -> FeedbackEvent:
    return FeedbackEvent(
        feedback_id=record.feedback_id, user_id=record.user_id, labeler_id=record.labeler_id,
        group_id=record.group_id, kind=record.kind,  # type: ignore[arg-type]
        response_ids=tuple(record.response_ids), up=record.up, created_at=record.created_at)


def _check_ids(record: Record) -> None:
    validate_user_id(getattr(record, "user_id", ""))
    if isinstance(record, FeedbackRecord):
        if record.labeler_id:
            validate_user_id(record.labeler_id, "labeler_id")
        if not all(isinstance(rid, str) for rid in record.response_ids):
            raise TypeError("response_ids must be strings")


def dead_letter_body(d: DeadLetter) -> dict[str, object]:
    return {"source_topic": d.record.topic, "partition": d.record.partition,
            "offset": d.record.offset, "reason": d.reason,
            "key": d.record.key.decode("utf-8", "replace") if d.record.key else None,
            "value": d.record.value.decode("utf-8", "replace")}

