"""Two `bench.learning` settings compared at the same number of feedback events, over
pairs of runs: for each user, the win rate vs base of the version it was served when it
had sent E events (the base model, 50%, before its first adapter), and per pair of runs
the difference by preference; then the mean paired difference with its t interval over
every (pair, preference), and on each side how many users reached bench.learning's win
target in time.

    .venv/bin/python -m bench.learning_compare A1.json:B1.json A2.json:B2.json
    .venv/bin/python -m bench.learning_compare --at-events 65 run/results.json:other.json

Each side is a `bench.learning --json` summary or a run folder's results.json (the
demo's data, with the whole history). E defaults to the fewest events any user of any
run sent, so that every user got there.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import t_interval, table, write_result
from bench.learning import WIN_TARGET, WIN_WITHIN_EVENTS, events_to, in_time, served

BASE_WIN = 0.5
"""The base model against itself: no adapter served yet."""


def win_at(points: Sequence[dict[str, Any]], events: int) -> float:
    """Win rate vs base of the version served when the user had sent ``events`` events."""
    win = BASE_WIN
    for p in points:
        if p["feedback"] > events:
            break
        win = p["win_rate"] if p["version"] else BASE_WIN
    return win


def load_users(path: Path) -> dict[str, dict[str, Any]]:
    """The users of one run by preference, each with its ``served`` points."""
    body = json.loads(path.read_text())
    users: dict[str, dict[str, Any]] = {}
    for u in body["users"]:
        if u["preference"] in users:
            raise ValueError(f"{path}: two users prefer {u['preference']}; pairing runs by "
                             "preference needs one user per preference")
        if "served" not in u and "history" not in u:
            raise ValueError(f"{path}: user {u['user']} has no served versions (neither "
                             "'served' nor 'history'): pass the run folder's results.json")
        points = u["served"] if "served" in u else served(u["history"])
        users[u["preference"]] = {"events": u["feedback_events"], "served": points}
    return users


def compare(pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]],
            events: int | None = None) -> dict[str, Any]:
    """Rows per (pair, preference) and the mean difference A - B with its 95% interval."""
    for a, b in pairs:
        if set(a) != set(b):
            raise ValueError(f"the runs of a pair must play the same preferences: "
                             f"{sorted(a)} against {sorted(b)}")
    fewest = min(u["events"] for pair in pairs for run in pair for u in run.values())
    if events is None:
        events = fewest
    elif events > fewest:
        raise ValueError(f"--at-events {events} is beyond a user who sent only {fewest} "
                         "events: what it would have been served then is unknown")
    rows = []
    for i, (a, b) in enumerate(pairs):
        for pref in sorted(a):
            wa, wb = win_at(a[pref]["served"], events), win_at(b[pref]["served"], events)
            rows.append({"pair": i + 1, "preference": pref, "a": wa, "b": wb,
                         "difference": wa - wb, "a_events": a[pref]["events"],
                         "b_events": b[pref]["events"], "a_reached": reached(a[pref]),
                         "b_reached": reached(b[pref])})
    mean, low, high = t_interval([r["difference"] for r in rows])
    return {"at_events": events, "rows": rows, "n": len(rows), "mean": mean, "low": low,
            "high": high, "a_reached": sum(r["a_reached"] for r in rows),
            "b_reached": sum(r["b_reached"] for r in rows)}


def reached(user: dict[str, Any]) -> bool:
    """Whether the user's served win reached the benchmark's target (75%, its interval
    above 50%) within its event budget (100 feedback events)."""
    return in_time(events_to(user["served"], WIN_TARGET))


def _pair_arg(text: str) -> tuple[Path, Path]:
    a, sep, b = text.partition(":")
    if not sep or not a or not b:
        raise argparse.ArgumentTypeError(f"expected A.json:B.json, got {text!r}")
    return Path(a), Path(b)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pairs", nargs="+", type=_pair_arg, metavar="A.json:B.json",
                   help="a run of setting A and a run of setting B on the same preferences")
    p.add_argument("--at-events", type=int, default=None,
                   help="feedback events per user, at most the fewest any user sent (the "
                        "default)")
    p.add_argument("--json", default=None, help="default bench/results/learning_compare.json")
    args = p.parse_args()
    try:
        result = compare([(load_users(a), load_users(b)) for a, b in args.pairs],
                         args.at_events)
    except (OSError, ValueError) as exc:
        p.error(str(exc))
    except KeyError as exc:
        p.error(f"not a bench.learning result (a user lacks {exc})")
    print(table(["pair", "preference", "A win", "B win", "A - B, pts", "A events", "B events"],
                [[r["pair"], r["preference"], r["a"], r["b"], 100 * r["difference"],
                  r["a_events"], r["b_events"]] for r in result["rows"]]))
    print(f"at {result['at_events']} events: A - B = {100 * result['mean']:+.1f} points "
          f"[{100 * result['low']:+.1f}, {100 * result['high']:+.1f}] (95% t interval, "
          f"n = {result['n']})")
    print(f"users at {WIN_TARGET:.0%} within {WIN_WITHIN_EVENTS} events: A {result['a_reached']}"
          f" of {result['n']}, B {result['b_reached']} of {result['n']}")
    write_result("learning_compare", {"pairs": [f"{a}:{b}" for a, b in args.pairs],
                                      "at_events": args.at_events}, result, args.json)


if __name__ == "__main__":
    main()
