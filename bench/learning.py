"""Learning quality on users with hidden preferences, end to end through the public API
(the demo's simulation, headless): per user, the reward model's held-out pairwise
accuracy (personal vs shared-only), the served adapter's win rate vs the base model
under the user's preference with its 95% interval and number of comparisons, leakage
onto the library's independent preferences, and byte-identity of other users'
answers while one user's adapter changes.

    .venv/bin/python -m bench.learning                             # 4 users, 30 min
    .venv/bin/python -m bench.learning --duration 3600 --users 9   # 8 families

Two settings compared at equal feedback events over pairs of runs: bench.learning_compare.

Targets (issue 12): personal RM accuracy >= 0.85 after 40 rankings, on every user,
where the shared model is <= 0.6 for users whose preference conflicts with another
user's; win rate >= 75% with its 95% interval above 50% within 100 feedback events,
on at least 6 of 8 families (75% of those run, and at least 6); no leakage beyond 5
points on independent preferences; other users' answers byte-identical.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from demo.__main__ import parse, run
from demo.preferences import PREFERENCES, conflicting

RM_TARGET, RM_AFTER_RANKINGS, SHARED_AT_MOST = 0.85, 40, 0.6
WIN_TARGET, WIN_WITHIN_EVENTS, FAMILIES_NEEDED, FAMILY_SHARE = 0.75, 100, 6, 0.75
LEAK_LIMIT_POINTS = 5.0


def events_to(history: list[dict[str, Any]], target: float) -> int | None:
    """Feedback events sent when the win rate first reached ``target`` with its 95%
    interval above 50%."""
    return next((p["feedback"] for p in history
                 if p["win_rate"] >= target and p["win_lo"] > 0.5), None)


def served(history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points of a user's history where its served version or that version's measured
    win rate changed, in order: what `bench.learning_compare` reads, without the rest of
    the history."""
    out: list[dict[str, Any]] = []
    for p in history:
        point = {k: p[k] for k in ("feedback", "version", "win_rate", "win_lo", "win_hi")}
        if not out or (out[-1]["version"], out[-1]["win_rate"]) != (p["version"],
                                                                     p["win_rate"]):
            out.append(point)
    return out


def rm_after(history: list[dict[str, Any]], rankings: int) -> tuple[float, float] | None:
    """(personal, shared) reward-model accuracy at the first measurement taken once the
    user had sent ``rankings`` rankings; None if it never was."""
    return next(((p["rm_accuracy"], p["rm_accuracy_shared"]) for p in history
                 if p["rankings"] >= rankings and p["rm_accuracy"] is not None
                 and p["rm_accuracy_shared"] is not None), None)


def annotate(users: list[dict[str, Any]]) -> None:
    """Adds ``events_to_75`` and ``rm_at_40`` to each user row (from its history)."""
    for u in users:
        u["events_to_75"] = events_to(u["history"], WIN_TARGET)
        u["rm_at_40"] = rm_after(u["history"], RM_AFTER_RANKINGS)


def in_time(events_to_target: int | None) -> bool:
    """Whether a user met the win-rate target within the event budget."""
    return events_to_target is not None and events_to_target <= WIN_WITHIN_EVENTS


def family_wins(users: list[dict[str, Any]]) -> dict[str, bool]:
    """Per family run: whether every user on it met the win-rate target in time."""
    out: dict[str, bool] = {}
    for u in users:
        out[u["family"]] = out.get(u["family"], True) and in_time(u["events_to_75"])
    return out


def leaks(leak: dict[str, Any]) -> bool:
    """A shift beyond the limit whose interval excludes no shift."""
    return abs(leak["points"]) > LEAK_LIMIT_POINTS and (leak["lo"] > 0 or leak["hi"] < 0)


def targets(users: list[dict[str, Any]], identity: dict[str, int]) -> dict[str, bool]:
    """Each target's verdict; a target nothing was measured for is unmet."""
    rm = [u["rm_at_40"] for u in users]
    in_conflict = [u["rm_at_40"] for u in users if any(
        conflicting(PREFERENCES[u["preference"]], PREFERENCES[v["preference"]])
        for v in users)]
    families = family_wins(users)
    passing = sum(families.values())
    measured = [lk for u in users for lk in u["leakage"] if lk["n"]]
    return {
        "personal_rm>=0.85_after_40_rankings": bool(rm) and all(
            m is not None and m[0] >= RM_TARGET for m in rm),
        "shared_rm<=0.6_on_conflicting_pairs": bool(in_conflict) and all(
            m is not None and m[1] <= SHARED_AT_MOST for m in in_conflict),
        "win>=75%_interval_above_50%_within_100_events_on_6_of_8_families": (
            passing >= FAMILIES_NEEDED and passing >= FAMILY_SHARE * len(families)),
        "leakage<=5_points_on_independent_preferences": bool(measured) and not any(
            leaks(lk) for lk in measured),
        "byte_identical_answers": identity["checks"] > 0 and identity["mismatches"] == 0,
    }


def table(users: list[dict[str, Any]]) -> str:
    head = (f"{'user':8s} {'preference':13s} {'events':>6s} {'rank':>4s} {'RM@40':>11s} "
            f"{'RM final':>11s} {'win [95%] n':>19s} {'best':>5s} {'ev@75%':>6s} "
            f"{'worst leak pts':>22s} {'same':>5s}")
    lines = [head, "-" * len(head)]
    for u in users:
        at40 = u["rm_at_40"]
        lk = u["leakage_worst"]
        leak = "-" if not lk or not lk["n"] else (
            f"{lk['points']:+.0f} [{lk['lo']:+.0f},{lk['hi']:+.0f}] {lk['preference'][:8]}")
        ident = u["identity"]
        lines.append(
            f"{u['user']:8s} {u['preference']:13s} {u['feedback_events']:6d} "
            f"{u['rankings']:4d} {_pair(at40):>11s} "
            f"{_pair((u['rm_accuracy'], u['rm_accuracy_shared'])):>11s} "
            f"{_win(u):>19s} {u['best_win_rate']:5.2f} {u['events_to_75'] or '-'!s:>6s} "
            f"{leak:>22s} {ident['checks'] - ident['mismatches']:>2d}/{ident['checks']:<2d}")
    return "\n".join(lines)


def _pair(pair: tuple[float | None, float | None] | list[Any] | None) -> str:
    """``personal/shared`` accuracies."""
    if pair is None or pair[0] is None:
        return "-"
    return f"{pair[0]:.2f}/{_f(pair[1])}"


def _win(u: dict[str, Any]) -> str:
    if not u["comparisons"]:
        return "-"
    return f"{u['win_rate']:.2f} [{u['win_lo']:.2f}-{u['win_hi']:.2f}] {u['comparisons']}"


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=1800.0)
    p.add_argument("--users", type=int, default=4)
    p.add_argument("--json", default="bench/results/learning.json")
    known, rest = p.parse_known_args()
    out = Path("bench/results/learning-run")
    shutil.rmtree(out, ignore_errors=True)  # every run starts from nothing
    args = parse(["--headless", "--duration", str(known.duration), "--users",
                  str(known.users), "--out", str(out), "--port-base", "50081", *rest])
    started = time.time()
    paths = run(args)
    result = json.loads(paths["data"].read_text())
    users = result["users"]
    annotate(users)
    verdicts = targets(users, result["identity"])
    summary = {"date": time.strftime("%Y-%m-%d", time.gmtime(started)),
               "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
               "settings": result["settings"], "targets_met": verdicts,
               "families_meeting_win_target": family_wins(users),
               "identity": result["identity"],
               "users": [{**{k: v for k, v in u.items() if k != "history"},
                          "served": served(u["history"])} for u in users],
               "chart": str(paths["chart"])}
    print(table(users))
    print(json.dumps(verdicts, indent=2))
    Path(known.json).parent.mkdir(parents=True, exist_ok=True)
    Path(known.json).write_text(json.dumps(summary, indent=2))
    print(f"wrote {known.json}")


if __name__ == "__main__":
    main()
