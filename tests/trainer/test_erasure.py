"""A user's erasure in the contract and the trainer's journal: the store keeps only a
tombstone that fences later publishes and reports, and the journal drops the user's rows
when it reads the tombstone, also on a rebuild from the same records."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from services.contract.records import (
    ErasureRecord,
    FeedbackRecord,
    GenerationRecord,
    RecordError,
    parse_feedback_topic,
)
from services.contract.store import AdapterStore, Erased, StaleParent
from services.server.lifecycle import requested_by
from tests.unit.test_adapters_and_store import _adapter
from trainer.ingest.journal import Consumed, Journal
from trainer.loop.service import empty_report
from trainer.reward.data import PairExample
from trainer.reward.shared_sample import SharedSample
from trainer.reward.users import UserHeadPool

G, F = "generations", "feedback"


def gen(rid: str, user: str, at: float, group: str = "") -> bytes:
    return GenerationRecord(
        response_id=rid, group_id=group or f"g-{rid}", user_id=user, candidate_index=0,
        num_candidates=1, messages=[{"role": "user", "content": "hi"}], prompt_token_ids=[1],
        completion=f"text {rid}", completion_token_ids=[2], finish_reason="stop",
        adapter_version="", base_model="m", sampling={}, created_at=at).to_json()


def thumbs(fid: str, rid: str, user: str, at: float) -> bytes:
    return FeedbackRecord(feedback_id=fid, user_id=user, labeler_id=user, kind="thumbs",
                          response_ids=[rid], group_id=f"g-{rid}", created_at=at,
                          up=True).to_json()


def erasure(user: str, at: float) -> bytes:
    return ErasureRecord(erasure_id=f"e-{at}", user_id=user, erased_at=at,
                         requested_by="self").to_json()


def consumed(records: list[tuple[str, bytes]]) -> list[Consumed]:
    """Records as one partition per topic delivers them, in order."""
    offsets: dict[str, int] = {}
    out = []
    for topic, value in records:
        offsets[topic] = offsets.get(topic, -1) + 1
        out.append(Consumed(topic, 0, offsets[topic], b"k", value))
    return out


def test_the_feedback_topic_holds_feedback_and_erasures() -> None:
    assert isinstance(parse_feedback_topic(thumbs("f", "r", "ann", 1.0)), FeedbackRecord)
    parsed = parse_feedback_topic(erasure("ann", 5.0))
    assert isinstance(parsed, ErasureRecord) and parsed.erased_at == 5.0
    with pytest.raises(RecordError):
        parse_feedback_topic(b'{"schema_version": 1, "type": "erasure", "user_id": "ann"}')


# the log: ann and bob rate answers; ann is erased at t=10 (one answer of hers served at
# t=9 reaches the journal only after the tombstone); then ann starts again at t=11
LOG = [
    (G, gen("a1", "ann", 1.0)), (G, gen("b1", "bob", 1.5)),
    (F, thumbs("fa1", "a1", "ann", 2.0)), (F, thumbs("fb1", "b1", "bob", 2.5)),
    (G, gen("a-new", "ann", 11.0)),  # the generations topic runs ahead of the feedback one
    (F, erasure("ann", 10.0)),
    (G, gen("a-late", "ann", 9.0)),  # served before the erasure, read after it
    (F, thumbs("fa-late", "a-late", "ann", 10.5)),  # (a replica that had not heard yet)
    (F, thumbs("fa-new", "a-new", "ann", 12.0)), (F, thumbs("fb2", "b1", "bob", 13.0)),
]


def journal_rows(j: Journal, user: str) -> tuple[list[str], list[str]]:
    rows = j._db.execute("SELECT response_id FROM generations WHERE user_id = ? "
                         "ORDER BY response_id", (user,)).fetchall()
    fids = [r[0] for r in j._db.execute(
        "SELECT feedback_id FROM feedback WHERE user_id = ? ORDER BY seq", (user,))]
    return [r[0] for r in rows], fids


@pytest.mark.parametrize("batch_size", [1, 3, len(LOG)])
def test_the_journal_drops_what_the_tombstone_erases(tmp_path: Path, batch_size: int) -> None:
    records = consumed(LOG)
    j = Journal(tmp_path / f"j{batch_size}.db", G, F)
    for i in range(0, len(records), batch_size):
        j.apply(records[i:i + batch_size])
    # ann: nothing from before t=10; what she did after it is kept and joins
    assert journal_rows(j, "ann") == (["a-new"], ["fa-late", "fa-new"])
    assert j.feedback_ids("ann") == ["fa-new"], "the late rating never joins"
    assert [e.event.feedback_id for e in j.joined("ann")] == ["fa-new"]
    assert j.erased_at("ann") == 10.0 and j.erased_at("bob") == 0.0
    assert j.erasures_to_apply() == [("ann", 10.0)]
    j.mark_erasure_applied("ann", 10.0)
    assert j.erasures_to_apply() == []
    # bob is untouched
    assert journal_rows(j, "bob") == (["b1"], ["fb1", "fb2"])
    assert j.feedback_ids("bob") == ["fb1", "fb2"]
    # a rebuild from the same log ends the same
    rebuilt = Journal(tmp_path / f"r{batch_size}.db", G, F)
    rebuilt.apply(records)
    for user in ("ann", "bob"):
        assert journal_rows(rebuilt, user) == journal_rows(j, user)


def test_a_second_erasure_moves_the_tombstone_on(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db", G, F)
    j.apply(consumed([(F, erasure("ann", 10.0))]))
    j.mark_erasure_applied("ann", 10.0)
    j.apply(consumed([(G, gen("x", "ann", 12.0)), (F, erasure("ann", 20.0)),
                      (F, erasure("ann", 15.0))]))  # an older one never moves it back
    assert j.erased_at("ann") == 20.0 and j.erasures_to_apply() == [("ann", 20.0)]
    assert journal_rows(j, "ann") == ([], [])


def test_the_store_keeps_only_a_tombstone_that_fences_later_writes(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "store")
    adapter = _adapter(tmp_path / "adapter")
    store.publish("ann", adapter, "m", "")
    store.publish("ann", adapter, "m", "v1")
    store.publish("bob", adapter, "m", "")
    report = empty_report()
    assert store.write_status("ann", report) and store.write_status("bob", report)
    store.write_control("ann", replace(store.read_control("ann"), reset=True))

    erased = store.erase("ann", 100.0)
    assert erased.versions == ("v1", "v2") and erased.status and erased.control
    assert sorted(p.name for p in store.user_dir("ann").iterdir()) == ["control.json"]
    assert store.versions("ann") == [] and store.read_status("ann") is None
    control = store.read_control("ann")
    assert (control.erased_at, control.erased_through, control.held) == (100.0, 2, False)
    assert store.versions("bob") == ["v1"] and store.read_status("bob") is not None

    # a candidate trained before the erasure is refused, also as a first version
    with pytest.raises(Erased) as info:
        store.publish("ann", adapter, "m", "", known_erasure=99.0)
    assert isinstance(info.value, StaleParent)  # the trainer drops it like a fenced turn
    assert not store.write_status("ann", report, known_erasure=99.0)
    assert store.read_status("ann") is None
    # trained after it: numbering goes on past the erased versions
    assert store.publish("ann", adapter, "m", "", known_erasure=100.0).version == "v3"
    assert store.write_status("ann", report, known_erasure=100.0)
    # a repeat deletes what came since; an older erasure time never moves it back
    again = store.erase("ann", 50.0)
    assert again.versions == ("v3",) and not again.control
    assert store.erased_at("ann") == 100.0 and store.read_control("ann").erased_through == 3
    assert store.erase("ann", 100.0).versions == ()


def test_in_memory_parts_forget_a_user() -> None:
    pool = UserHeadPool(4, "cpu", 4, on_evict=lambda u: pytest.fail(f"{u} was saved"))
    pool.get_or_create("ann")
    pool.get_or_create("bob")
    pool.forget("ann")
    assert pool.resident_users() == ["bob"]
    sample = SharedSample(10, 5)

    def pair(user: str, i: int) -> PairExample:
        return PairExample(user_id=user, prompt=f"p{i}", chosen="a", rejected="b")
    sample.put("ann", [pair("ann", i) for i in range(3)])
    sample.put("bob", [pair("bob", i) for i in range(2)])
    sample.remove("ann")
    assert sample.users() == ["bob"] and len(sample) == 2
    assert {e.user_id for e in sample.examples()[0]} == {"bob"}


def test_requested_by_names_how_an_erasure_was_authorised() -> None:
    from services.contract.auth import OPEN, Caller

    assert requested_by(OPEN) == "open"
    assert requested_by(Caller("ops", admin=True)) == "admin"
    assert requested_by(Caller("ann")) == "self"
