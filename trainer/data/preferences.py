"""Raw human feedback -> preference data for the reward model (pure Python).

A ranking of N completions gives all N*(N-1)/2 pairs, preferred completion first
(reward 1 for ``chosen``, 0 for ``rejected``). Thumbs give labelled single
completions, and thumbs on several completions of one group give up-over-down
pairs. When several labelers judged the same prompt/completion set (group), each
labeler gets a leave-one-out agreement score, labelers who mostly disagree with
the others are flagged and down-weighted, and the group's pairs are the weighted
majority of the votes.

Rules, per labeler and group: a ranking wins over thumbs on the same pair (it is
the more explicit signal); the latest ranking wins over earlier ones; the latest
thumb per response wins. Response ids are server-issued and must each belong to
exactly one group.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger(__name__)

PairKey = tuple[str, str]
"""An unordered pair of response ids, stored sorted."""


@dataclass(frozen=True)
class FeedbackEvent:
    """One acknowledged feedback event, as read from the ``feedback`` topic."""

    feedback_id: str
    user_id: str
    labeler_id: str
    group_id: str
    """One Generate call: all response ids of a ranking share it."""
    kind: Literal["thumbs", "ranking"]
    response_ids: tuple[str, ...]
    """Thumbs: exactly one id. Ranking: >= 2 distinct ids, best first."""
    up: bool | None
    """Thumbs only: True = up, False = down. None for a ranking."""
    created_at: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "response_ids", tuple(self.response_ids))
        if self.kind == "ranking":
            if self.up is not None:
                raise ValueError(f"feedback {self.feedback_id}: a ranking takes no up/down")
            _check_ranking(self.response_ids)
        elif self.kind == "thumbs":
            if len(self.response_ids) != 1 or not isinstance(self.up, bool):
                raise ValueError(
                    f"feedback {self.feedback_id}: thumbs need exactly one response id and "
                    f"up=True/False, got {len(self.response_ids)} ids and up={self.up!r}"
                )
        else:
            raise ValueError(f"feedback {self.feedback_id}: unknown kind {self.kind!r}")


@dataclass(frozen=True)
class PreferencePair:
    """``chosen_id`` preferred over ``rejected_id`` (reward 1 vs 0).

    ``labeler_id`` and ``feedback_id`` name the labelers and events on the winning side,
    sorted and comma-joined when there are several.
    """

    group_id: str
    chosen_id: str
    rejected_id: str
    weight: float
    labeler_id: str
    feedback_id: str


@dataclass(frozen=True)
class ThumbLabel:
    """One thumbs rating of a single completion: ``label`` 1.0 = up, 0.0 = down."""

    group_id: str
    response_id: str
    label: float
    weight: float
    labeler_id: str
    feedback_id: str


@dataclass(frozen=True)
class LabelerScore:
    """How well a labeler agrees with the others (leave-one-out majority).

    ``judgements`` counts only the pair judgements that another labeler's majority
    could check; with none, ``agreement`` is a neutral 1.0 and the labeler is not flagged.
    """

    labeler_id: str
    agreement: float
    judgements: int
    flagged: bool
    weight: float
    """Vote and loss weight: ``agreement`` when flagged, else 1.0."""


@dataclass(frozen=True)
class PreferenceConfig:
    """How feedback becomes preference data."""

    min_judgements: int = 3
    """Counted judgements a labeler needs before it can be flagged."""
    flag_below: float = 0.5
    """A labeler whose agreement is below this is flagged and down-weighted."""
    min_weight: float = 0.0
    """Pairs and thumb labels with a weight not above this are left out (0.0 drops only
    zero-weight ones, which add nothing to the loss)."""


@dataclass(frozen=True)
class PreferenceData:
    """What the reward model trains on for one user."""

    pairs: tuple[PreferencePair, ...]
    thumbs: tuple[ThumbLabel, ...]
    labelers: Mapping[str, LabelerScore]


@dataclass(frozen=True)
class _Vote:
    """One labeler's judgement of one pair and the events it came from."""

    winner: str
    loser: str
    feedback_ids: frozenset[str]


# group_id -> labeler_id -> pair -> vote
_GroupVotes = dict[str, dict[str, dict[PairKey, _Vote]]]


def pair_key(a: str, b: str) -> PairKey:
    """The order-free key of the pair ``{a, b}``."""
    return (a, b) if a <= b else (b, a)


def _check_ranking(response_ids: Sequence[str]) -> None:
    """Raise ValueError unless ``response_ids`` holds >= 2 distinct ids."""
    if len(response_ids) < 2:
        raise ValueError(f"a ranking needs at least 2 response ids, got {len(response_ids)}")
    duplicates = sorted(r for r, n in Counter(response_ids).items() if n > 1)
    if duplicates:
        raise ValueError(f"a ranking must not repeat response ids, repeated: {duplicates}")


def ranking_to_pairs(response_ids: Sequence[str]) -> list[tuple[str, str]]:
    """All N*(N-1)/2 ``(preferred, less preferred)`` pairs of a best-first ranking.

    Pairs come in index order: ``(ids[i], ids[j])`` for every ``i < j``.
    """
    _check_ranking(response_ids)
    return list(itertools.combinations(response_ids, 2))


def _latest_thumbs(labels: Sequence[ThumbLabel]) -> dict[str, ThumbLabel]:
    """The last label per response id (in ``labels`` order), keyed in first-seen order."""
    return {label.response_id: label for label in labels}


def thumbs_to_pairs(labels: Sequence[ThumbLabel]) -> list[tuple[str, str]]:
    """``(up, down)`` pairs from one labeler's thumbs on one group.

    ``labels`` must be in chronological order: the latest thumb per response wins.
    Every up-rated response is preferred over every down-rated one.
    """
    if len({(label.group_id, label.labeler_id) for label in labels}) > 1:
        raise ValueError("thumbs_to_pairs takes the thumbs of one labeler on one group")
    latest = _latest_thumbs(labels).values()
    ups = [label.response_id for label in latest if label.label > 0.5]
    downs = [label.response_id for label in latest if label.label <= 0.5]
    return [(up, down) for up in ups for down in downs]


def _thumb_label(event: FeedbackEvent, weight: float) -> ThumbLabel:
    """The ThumbLabel of a thumbs event."""
    label = 1.0 if event.up else 0.0
    rid = event.response_ids[0]
    return ThumbLabel(event.group_id, rid, label, weight, event.labeler_id, event.feedback_id)


def _prepare(events: Sequence[FeedbackEvent]) -> list[FeedbackEvent]:
    """Deduplicate by feedback_id (first seen wins), sort by time, check response groups."""
    unique: dict[str, FeedbackEvent] = {}
    for event in events:
        seen = unique.setdefault(event.feedback_id, event)
        if seen != event:
            log.warning(
                "feedback %s seen twice with different content; kept the first", event.feedback_id
            )
    ordered = sorted(unique.values(), key=lambda e: (e.created_at, e.feedback_id))
    group_of: dict[str, str] = {}
    for event in ordered:
        for response_id in event.response_ids:
            if group_of.setdefault(response_id, event.group_id) != event.group_id:
                raise ValueError(
                    f"response {response_id} appears in groups "
                    f"{group_of[response_id]} and {event.group_id}"
                )
    return ordered


def _labeler_votes(events: Sequence[FeedbackEvent]) -> dict[PairKey, _Vote]:
    """One labeler's votes on one group from its chronological events."""
    votes: dict[PairKey, _Vote] = {}
    thumbs: list[ThumbLabel] = []
    for event in events:
        if event.kind == "thumbs":
            thumbs.append(_thumb_label(event, weight=1.0))
            continue
        for winner, loser in ranking_to_pairs(event.response_ids):
            votes[pair_key(winner, loser)] = _Vote(winner, loser, frozenset({event.feedback_id}))
    latest = _latest_thumbs(thumbs)
    for up, down in thumbs_to_pairs(thumbs):
        ids = frozenset({latest[up].feedback_id, latest[down].feedback_id})
        votes.setdefault(pair_key(up, down), _Vote(up, down, ids))
    return votes


def _group_votes(events: Sequence[FeedbackEvent]) -> _GroupVotes:
    """Every labeler's votes, per group, from prepared (deduplicated, sorted) events."""
    by_group: dict[str, dict[str, list[FeedbackEvent]]] = defaultdict(lambda: defaultdict(list))
    for event in events:
        by_group[event.group_id][event.labeler_id].append(event)
    return {
        group_id: {labeler: _labeler_votes(evs) for labeler, evs in labelers.items()}
        for group_id, labelers in by_group.items()
    }


def pairwise_judgements(events: Sequence[FeedbackEvent]) -> dict[str, dict[PairKey, str]]:
    """labeler_id -> unordered pair (``pair_key``) -> the response that labeler preferred."""
    judgements: dict[str, dict[PairKey, str]] = defaultdict(dict)
    for labelers in _group_votes(_prepare(events)).values():
        for labeler, votes in labelers.items():
            judgements[labeler].update((key, vote.winner) for key, vote in votes.items())
    return dict(judgements)


def _majority(winners: Sequence[str]) -> str | None:
    """The strict plurality winner of ``winners``; None when empty or tied."""
    ranked = Counter(winners).most_common(2)
    if not ranked or (len(ranked) == 2 and ranked[0][1] == ranked[1][1]):
        return None
    return ranked[0][0]


def _score(labeler: str, agreed: int, counted: int, config: PreferenceConfig) -> LabelerScore:
    """A LabelerScore from its agreement counts (neutral 1.0 when nothing was counted)."""
    agreement = agreed / counted if counted else 1.0
    flagged = counted >= config.min_judgements and agreement < config.flag_below
    if flagged:
        log.info(
            "labeler %s flagged: agreement %.2f over %d judgements", labeler, agreement, counted
        )
    return LabelerScore(labeler, agreement, counted, flagged, agreement if flagged else 1.0)


def labeler_agreement(
    events: Sequence[FeedbackEvent], min_judgements: int = 3, flag_below: float = 0.5
) -> dict[str, LabelerScore]:
    """Leave-one-out agreement of every labeler in ``events``.

    A judgement counts when the OTHER labelers who judged the same pair have a strict
    majority; it agrees when it picks the same winner. Labelers with fewer than
    ``min_judgements`` counted judgements are never flagged.
    """
    config = PreferenceConfig(min_judgements=min_judgements, flag_below=flag_below)
    prepared = _prepare(events)
    agreed: Counter[str] = Counter()
    counted: Counter[str] = Counter()
    for labelers in _group_votes(prepared).values():
        for labeler, votes in labelers.items():
            for key, vote in votes.items():
                others = [v[key].winner for o, v in labelers.items() if o != labeler and key in v]
                majority = _majority(others)
                if majority is not None:
                    counted[labeler] += 1
                    agreed[labeler] += majority == vote.winner
    labelers_seen = dict.fromkeys(event.labeler_id for event in prepared)
    return {name: _score(name, agreed[name], counted[name], config) for name in labelers_seen}


def _weight(scores: Mapping[str, LabelerScore], labeler: str) -> float:
    """A labeler's weight; 1.0 for a labeler without a score."""
    return scores[labeler].weight if labeler in scores else 1.0


def _consensus_pair(
    group_id: str, voters: Sequence[tuple[str, _Vote]], scores: Mapping[str, LabelerScore]
) -> PreferencePair | None:
    """The weighted-majority pair of one pair's ``(labeler, vote)``s; None on a tie.

    weight = (w_winner - w_loser) / max(1, w_winner + w_loser): 1.0 for a unanimous vote
    of full-weight labelers, a lone labeler's own weight, smaller for split votes.
    """
    totals: Counter[str] = Counter()
    for labeler, vote in voters:
        totals[vote.winner] += _weight(scores, labeler)
        totals[vote.loser] += 0.0
    (winner, w_win), (loser, w_lose) = totals.most_common(2)
    margin = (w_win - w_lose) / max(1.0, w_win + w_lose)
    if margin <= 1e-12:
        return None  # exact tie (or only zero-weight voters): no preference
    support = [(labeler, vote) for labeler, vote in voters if vote.winner == winner]
    return PreferencePair(
        group_id=group_id,
        chosen_id=winner,
        rejected_id=loser,
        weight=margin,
        labeler_id=",".join(sorted({labeler for labeler, _ in support})),
        feedback_id=",".join(sorted(set().union(*(vote.feedback_ids for _, vote in support)))),
    )


def consensus_pairs(
    events: Sequence[FeedbackEvent], scores: Mapping[str, LabelerScore]
) -> list[PreferencePair]:
    """Per group, the weighted-majority winner of every judged pair; exact ties dropped."""
    pairs = []
    for group_id, labelers in _group_votes(_prepare(events)).items():
        voters: dict[PairKey, list[tuple[str, _Vote]]] = defaultdict(list)
        for labeler, votes in labelers.items():
            for key, vote in votes.items():
                voters[key].append((labeler, vote))
        candidates = (_consensus_pair(group_id, v, scores) for v in voters.values())
        pairs.extend(pair for pair in candidates if pair is not None)
    return pairs


def build_preferences(
    events: Sequence[FeedbackEvent], config: PreferenceConfig | None = None
) -> PreferenceData:
    """One user's preference data: pairs, thumb labels and labeler scores.

    A group judged by one labeler gives that labeler's pairs at its weight (the consensus
    of a single voter); a group judged by several gives the consensus pairs. Every
    thumbs event that is the latest of its labeler on its response gives a ThumbLabel.
    """
    config = config or PreferenceConfig()
    prepared = _prepare(events)
    users = {event.user_id for event in prepared}
    if len(users) > 1:
        raise ValueError(f"build_preferences takes one user's events, got {sorted(users)}")
    scores = labeler_agreement(prepared, config.min_judgements, config.flag_below)
    pairs = [p for p in consensus_pairs(prepared, scores) if p.weight > config.min_weight]
    latest: dict[tuple[str, str], FeedbackEvent] = {
        (e.labeler_id, e.response_ids[0]): e for e in prepared if e.kind == "thumbs"
    }
    thumbs = [_thumb_label(e, _weight(scores, e.labeler_id)) for e in latest.values()]
    thumbs = [t for t in thumbs if t.weight > config.min_weight]
    log.debug(
        "preferences: %d events -> %d pairs, %d thumbs", len(prepared), len(pairs), len(thumbs)
    )
    return PreferenceData(tuple(pairs), tuple(thumbs), scores)
