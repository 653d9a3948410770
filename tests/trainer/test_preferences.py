"""Feedback -> preference pairs, thumb labels and labeler consensus (pure Python)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.data.preferences import (
    FeedbackEvent,
    LabelerScore,
    PreferenceConfig,
    PreferencePair,
    ThumbLabel,
    build_preferences,
    consensus_pairs,
    labeler_agreement,
    pair_key,
    pairwise_judgements,
    ranking_to_pairs,
    thumbs_to_pairs,
)

IDS = ("r1", "r2", "r3", "r4")


def rank(fid: str, labeler: str, ids: tuple[str, ...], t: float = 0.0, group: str = "g1"):
    return FeedbackEvent(fid, "u1", labeler, group, "ranking", ids, None, t)


def thumb(fid: str, labeler: str, rid: str, up: bool, t: float = 0.0, group: str = "g1"):
    return FeedbackEvent(fid, "u1", labeler, group, "thumbs", (rid,), up, t)


def label(rid: str, value: float, fid: str = "f") -> ThumbLabel:
    return ThumbLabel("g1", rid, value, 1.0, "A", fid)


def reference_pairs(ids: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for i in range(len(ids)):
        for j in range(i + 1, len(ids)):
            pairs.append((ids[i], ids[j]))
    return pairs


# 1. ranking -> pairs


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_ranking_gives_all_pairs_preferred_first(n: int) -> None:
    ids = [f"r{i}" for i in range(n)]
    pairs = ranking_to_pairs(ids)
    assert len(pairs) == n * (n - 1) // 2
    assert all(ids.index(chosen) < ids.index(rejected) for chosen, rejected in pairs)
    assert len({pair_key(*p) for p in pairs}) == len(pairs)


def test_ranking_pairs_exact_order() -> None:
    assert ranking_to_pairs(["a", "b"]) == [("a", "b")]
    assert ranking_to_pairs(["c", "a", "b"]) == [("c", "a"), ("c", "b"), ("a", "b")]
    assert ranking_to_pairs(IDS) == [
        ("r1", "r2"), ("r1", "r3"), ("r1", "r4"), ("r2", "r3"), ("r2", "r4"), ("r3", "r4"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("ids", "message"),
    [([], "at least 2"), (["a"], "at least 2"), (["a", "b", "a"], r"repeated: \['a'\]")],
)
def test_ranking_rejects_bad_input(ids: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ranking_to_pairs(ids)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=3), min_size=2, max_size=8, unique=True), st.data())
def test_ranking_matches_nested_loop(ids: list[str], data: st.DataObject) -> None:
    permuted = data.draw(st.permutations(ids))
    assert ranking_to_pairs(permuted) == reference_pairs(permuted)


def test_feedback_event_validation() -> None:
    with pytest.raises(ValueError, match="exactly one response id"):
        FeedbackEvent("f", "u1", "A", "g1", "thumbs", ("r1", "r2"), True, 0.0)
    with pytest.raises(ValueError, match="exactly one response id"):
        FeedbackEvent("f", "u1", "A", "g1", "thumbs", ("r1",), None, 0.0)
    with pytest.raises(ValueError, match="no up/down"):
        FeedbackEvent("f", "u1", "A", "g1", "ranking", ("r1", "r2"), True, 0.0)
    with pytest.raises(ValueError, match="repeat"):
        rank("f", "A", ("r1", "r1"))
    with pytest.raises(ValueError, match="unknown kind"):
        FeedbackEvent("f", "u1", "A", "g1", "stars", ("r1",), None, 0.0)  # type: ignore[arg-type]


# 2. thumbs -> labels and pairs


def test_thumbs_to_pairs_up_over_down() -> None:
    labels = [label("r1", 1.0), label("r2", 0.0), label("r3", 1.0), label("r4", 0.0)]
    assert thumbs_to_pairs(labels) == [("r1", "r2"), ("r1", "r4"), ("r3", "r2"), ("r3", "r4")]
    assert thumbs_to_pairs([label("r1", 1.0), label("r2", 1.0)]) == []


def test_thumbs_to_pairs_latest_thumb_wins() -> None:
    labels = [label("r1", 1.0), label("r2", 0.0), label("r1", 0.0), label("r3", 1.0)]
    assert thumbs_to_pairs(labels) == [("r3", "r1"), ("r3", "r2")]


def test_thumbs_to_pairs_rejects_mixed_labelers() -> None:
    with pytest.raises(ValueError, match="one labeler on one group"):
        thumbs_to_pairs([label("r1", 1.0), ThumbLabel("g1", "r2", 0.0, 1.0, "B", "f")])


def test_build_preferences_from_thumbs() -> None:
    events = [thumb("f1", "A", "r1", True, 1.0), thumb("f2", "A", "r2", False, 2.0)]
    data = build_preferences(events)
    assert data.thumbs == (
        ThumbLabel("g1", "r1", 1.0, 1.0, "A", "f1"),
        ThumbLabel("g1", "r2", 0.0, 1.0, "A", "f2"),
    )
    assert data.pairs == (PreferencePair("g1", "r1", "r2", 1.0, "A", "f1,f2"),)


def test_latest_thumb_wins_by_time_not_input_order() -> None:
    events = [thumb("f2", "A", "r1", False, 2.0), thumb("f1", "A", "r1", True, 1.0)]
    assert build_preferences(events).thumbs == (ThumbLabel("g1", "r1", 0.0, 1.0, "A", "f2"),)


def test_ranking_wins_over_thumbs_of_same_labeler() -> None:
    events = [
        rank("f1", "A", ("r1", "r2"), 1.0),
        thumb("f2", "A", "r2", True, 2.0),
        thumb("f3", "A", "r1", False, 3.0),
    ]
    assert pairwise_judgements(events) == {"A": {("r1", "r2"): "r1"}}
    assert [(p.chosen_id, p.feedback_id) for p in build_preferences(events).pairs] == [("r1", "f1")]


# 3. consensus across labelers


def test_reversed_labeler_is_flagged_and_outvoted() -> None:
    events = [
        rank("fA", "A", IDS, 1.0),
        rank("fB", "B", IDS, 2.0),
        rank("fC", "C", tuple(reversed(IDS)), 3.0),
    ]
    judgements = pairwise_judgements(events)
    assert judgements["A"][("r1", "r2")] == "r1"
    assert judgements["C"][("r1", "r2")] == "r2"
    assert len(judgements["C"]) == 6

    scores = labeler_agreement(events)
    assert scores["C"] == LabelerScore("C", 0.0, 6, True, 0.0)
    # A and B: the other two split on every pair, so nothing is counted: neutral score.
    assert scores["A"] == LabelerScore("A", 1.0, 0, False, 1.0)
    assert scores["C"].weight < scores["A"].weight

    pairs = consensus_pairs(events, scores)
    assert pairs == [
        PreferencePair("g1", a, b, 1.0, "A,B", "fA,fB") for a, b in ranking_to_pairs(IDS)
    ]
    assert build_preferences(events).pairs == tuple(pairs)


def test_partial_disagreement_gives_fractional_weights() -> None:
    events = [
        rank("fA", "A", ("r1", "r2", "r3")),
        rank("fB", "B", ("r1", "r2", "r3")),
        rank("fC", "C", ("r3", "r1", "r2")),  # agrees on (r1, r2) only
        rank("fC2", "C", ("r5", "r6"), group="g2"),  # alone on g2
    ]
    scores = labeler_agreement(events)
    assert scores["C"] == LabelerScore("C", pytest.approx(1 / 3), 3, True, pytest.approx(1 / 3))
    weights = {
        (p.group_id, p.chosen_id, p.rejected_id): p.weight for p in consensus_pairs(events, scores)
    }
    assert weights == {
        ("g1", "r1", "r2"): pytest.approx(1.0),  # unanimous
        ("g1", "r1", "r3"): pytest.approx((2 - 1 / 3) / (2 + 1 / 3)),
        ("g1", "r2", "r3"): pytest.approx((2 - 1 / 3) / (2 + 1 / 3)),
        ("g2", "r5", "r6"): pytest.approx(1 / 3),  # single labeler: its own weight
    }


def test_agreement_threshold_and_min_judgements() -> None:
    majority = [rank(f"f{n}", n, IDS) for n in "ABD"]
    half = rank("fC", "C", ("r1", "r4", "r3", "r2"))  # 3 of 6 pairs agree
    scores = labeler_agreement([*majority, half])
    assert scores["C"] == LabelerScore("C", 0.5, 6, False, 1.0)
    assert scores["A"] == LabelerScore("A", 1.0, 6, False, 1.0)
    reverse = rank("fC", "C", tuple(reversed(IDS)))
    assert labeler_agreement([*majority, reverse], min_judgements=7)["C"].flagged is False
    assert labeler_agreement([*majority, half], flag_below=0.6)["C"].weight == 0.5


def test_exact_tie_is_dropped() -> None:
    events = [rank("fA", "A", ("r1", "r2")), rank("fB", "B", ("r2", "r1"))]
    scores = labeler_agreement(events)
    assert scores["A"] == LabelerScore("A", 0.0, 1, False, 1.0)  # too few to flag
    assert consensus_pairs(events, scores) == []


def test_zero_weight_labeler_thumbs_are_dropped() -> None:
    events = [
        rank("fA", "A", IDS),
        rank("fB", "B", IDS),
        rank("fC", "C", tuple(reversed(IDS))),
        thumb("tC", "C", "r9", True, group="g2"),
        thumb("tA", "A", "r8", False, group="g3"),
    ]
    data = build_preferences(events)
    assert data.thumbs == (ThumbLabel("g3", "r8", 0.0, 1.0, "A", "tA"),)
    kept = build_preferences(events, PreferenceConfig(min_weight=-1.0))
    assert [t.feedback_id for t in kept.thumbs] == ["tA", "tC"]  # same time: by feedback_id
    assert kept.thumbs[1].weight == 0.0


# 4. dedup and input checks


def test_duplicate_feedback_is_used_once() -> None:
    events = [rank("f1", "A", ("r1", "r2")), thumb("f2", "A", "r3", True, group="g2")]
    once = build_preferences(events)
    twice = build_preferences([*events, *events])
    assert twice == once
    assert len(twice.pairs) == 1
    assert len(twice.thumbs) == 1
    assert twice.pairs[0].weight == 1.0


def test_same_feedback_id_keeps_first_seen(caplog: pytest.LogCaptureFixture) -> None:
    first = rank("f1", "A", ("r1", "r2"), 1.0)
    changed = rank("f1", "A", ("r2", "r1"), 2.0)  # would win as the later ranking
    data = build_preferences([first, changed])
    assert data.pairs == (PreferencePair("g1", "r1", "r2", 1.0, "A", "f1"),)
    assert "f1 seen twice with different content" in caplog.text


def test_build_preferences_rejects_bad_input() -> None:
    other_user = FeedbackEvent("f2", "u2", "A", "g2", "ranking", ("r3", "r4"), None, 0.0)
    with pytest.raises(ValueError, match="one user's events"):
        build_preferences([rank("f1", "A", ("r1", "r2")), other_user])
    with pytest.raises(ValueError, match="appears in groups"):
        build_preferences(
            [rank("f1", "A", ("r1", "r2")), rank("f2", "A", ("r1", "r3"), group="g2")]
        )
    assert build_preferences([]) == build_preferences(())
