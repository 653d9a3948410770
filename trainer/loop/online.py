"""Online evaluation (pure): the user's own rankings and thumbs of interleaved
candidates (services/server/arms.py) as comparisons of the served version against a
comparison arm, their win rates with Wilson intervals, and the rollback rule.

Everything here is derived from the journal (joined feedback with its generation
records), so it rebuilds from the topics like the rest of the trainer's state.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from services.contract.records import GenerationRecord
from services.contract.status import OnlineWinRate
from trainer.ingest.journal import Joined

Outcome = Literal["win", "loss", "tie"]
"""The served version's result in one comparison."""
COMPARISON_ARMS = ("base", "parent")
OUTCOMES: tuple[Outcome, ...] = ("win", "loss", "tie")


@dataclass(frozen=True)
class OnlineConfig:
    """Online win rates and automatic rollback."""

    rollback: bool = True
    """Roll a served version back to its parent when it loses to it with confidence."""
    rollback_min_comparisons: int = 20
    """Comparisons against the parent a version needs before it can be rolled back."""
    rollback_max_upper_bound: float = 0.5
    """Roll back when the upper bound of the 95% Wilson interval of the served version's
    win rate against its parent (a tie counting half) is below this."""
    z: float = 1.96
    """Normal quantile of the intervals (1.96: 95%)."""


@dataclass(frozen=True)
class Comparison:
    """One judgement of the served version against a comparison arm."""

    served_version: str
    arm: str
    """``base`` or ``parent``."""
    arm_version: str
    outcome: Outcome


def wilson_interval(wins: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson's score interval of a proportion ``wins / n`` (a tie counting half a win);
    (0, 1) before any trial."""
    if n <= 0:
        return 0.0, 1.0
    p = wins / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _outcome(served_score: float, arm_score: float) -> Outcome:
    return "win" if served_score > arm_score else "loss" if served_score < arm_score else "tie"


def _is_arm(g: GenerationRecord) -> bool:
    return g.arm in COMPARISON_ARMS and bool(g.adapter_version)


def comparisons(joined: Sequence[Joined]) -> list[Comparison]:
    """The comparisons in a user's joined feedback, in arrival order.

    A ranking that holds an arm's candidate and served ones is one comparison: the
    served version wins when most of its candidates are ranked above the arm's, loses
    when most are below, ties otherwise (one judgement per ranking, so the interval is
    not narrowed by correlated pairs). Thumbs count per (call, labeler) once the arm's
    candidate and a served one are rated: the served candidates' share of thumbs up
    against the arm's (the latest rating of each response counts).
    """
    out: list[Comparison] = []
    thumbs: dict[tuple[str, str], dict[str, bool]] = defaultdict(dict)
    gens: dict[str, GenerationRecord] = {}
    for j in joined:
        gens.update(j.generations)
        ev = j.event
        if ev.kind == "thumbs" and ev.up is not None:
            thumbs[(ev.group_id, ev.labeler_id)][ev.response_ids[0]] = bool(ev.up)
            continue
        if ev.kind != "ranking":
            continue
        ranked = [j.generations[r] for r in ev.response_ids if r in j.generations]
        served = [i for i, g in enumerate(ranked) if g.arm == "served"]
        for pos, g in enumerate(ranked):
            if _is_arm(g) and served:
                above = sum(i < pos for i in served) / len(served)
                out.append(Comparison(g.adapter_version, g.arm, g.arm_version,
                                      _outcome(above, 0.5)))
    for rated in thumbs.values():
        arms = [gens[r] for r in rated if r in gens and _is_arm(gens[r])]
        served = [up for r, up in rated.items() if r in gens and gens[r].arm == "served"]
        for g in arms[:1]:
            if served:
                out.append(Comparison(g.adapter_version, g.arm, g.arm_version,
                                      _outcome(sum(served) / len(served),
                                               float(rated[g.response_id]))))
    return out


def tally(comps: Iterable[Comparison], version: str, arm: str, z: float = 1.96
          ) -> OnlineWinRate:
    """Wins, losses and ties of ``version`` against ``arm``, with the win rate (a tie
    counting half) and its Wilson interval."""
    counts = {o: 0 for o in OUTCOMES}
    arm_version = ""
    for c in comps:
        if c.served_version == version and c.arm == arm:
            counts[c.outcome] += 1
            arm_version = c.arm_version
    n = sum(counts.values())
    score = counts["win"] + 0.5 * counts["tie"]
    lower, upper = wilson_interval(score, n, z)
    return OnlineWinRate(version=version, arm_version=arm_version, wins=counts["win"],
                         losses=counts["loss"], ties=counts["tie"],
                         win_rate=score / n if n else 0.0, lower=lower, upper=upper)


def should_roll_back(cfg: OnlineConfig, vs_parent: OnlineWinRate) -> str:
    """Why ``vs_parent``'s version should be rolled back to its parent ("" : it should
    not): enough comparisons and the interval's upper bound below the threshold."""
    n = vs_parent.wins + vs_parent.losses + vs_parent.ties
    if (not cfg.rollback or not vs_parent.arm_version or n < cfg.rollback_min_comparisons
            or vs_parent.upper >= cfg.rollback_max_upper_bound):
        return ""
    return (f"{vs_parent.version} lost to its parent {vs_parent.arm_version} online: win "
            f"rate {vs_parent.win_rate:.2f} [{vs_parent.lower:.2f}, {vs_parent.upper:.2f}] over "
            f"{n} comparisons ({vs_parent.wins} won, {vs_parent.losses} lost, "
            f"{vs_parent.ties} tied)")
