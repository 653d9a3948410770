"""Learning quality on users with conflicting hidden preferences, end to end through the
public API (the demo's simulation, headless): per user, the reward model's held-out
pairwise accuracy (personal vs shared-only), the served adapter's win rate vs the base
model under the user's preference, its win rate under the other users' preferences
(leakage), and the feedback events it took.

    .venv/bin/python -m bench.learning --duration 600 --users 2

Targets: personal RM accuracy >= 0.9 where the shared one is <= 0.6; win rate >= 75%
after <= 200 feedback events per user; leakage <= 5 points.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any

from demo.__main__ import parse, run


def events_to(history: list[dict[str, Any]], target: float) -> int | None:
    """Feedback events sent when the win rate first reached ``target``."""
    return next((p["feedback"] for p in history if p["win_rate"] >= target), None)


def table(users: list[dict[str, Any]]) -> str:
    head = (f"{'user':6s} {'preference':10s} {'events':>6s} {'RM pers':>8s} {'RM shared':>9s} "
            f"{'win':>5s} {'best':>5s} {'ev@75%':>6s} {'leak pts':>8s}")
    lines = [head, "-" * len(head)]
    for u in users:
        lines.append(
            f"{u['user']:6s} {u['preference']:10s} {u['feedback_events']:6d} "
            f"{_f(u['rm_accuracy']):>8s} {_f(u['rm_accuracy_shared']):>9s} "
            f"{u['win_rate']:5.2f} {u['best_win_rate']:5.2f} "
            f"{u['events_to_75'] or '-'!s:>6s} {u['leakage_points']:8.1f}")
    return "\n".join(lines)


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def targets(users: list[dict[str, Any]]) -> dict[str, bool]:
    # the first target speaks of users the shared model fails (<= 0.6); with none, unmet
    failed_by_shared = [u for u in users if u["rm_accuracy"] is not None
                        and u["rm_accuracy_shared"] is not None
                        and u["rm_accuracy_shared"] <= 0.6]
    return {
        "personal_rm_accuracy>=0.9_where_shared<=0.6": bool(failed_by_shared) and all(
            u["rm_accuracy"] >= 0.9 for u in failed_by_shared),
        "win_rate>=0.75_within_200_events": all(
            u["events_to_75"] is not None and u["events_to_75"] <= 200 for u in users),
        "leakage<=5_points": all(u["leakage_points"] <= 5 for u in users),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=600.0)
    p.add_argument("--users", type=int, default=2)
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
    for u in users:
        u["events_to_75"] = events_to(u["history"], 0.75)
    summary = {"date": time.strftime("%Y-%m-%d", time.gmtime(started)),
               "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
               "settings": result["settings"], "targets_met": targets(users),
               "users": [{k: v for k, v in u.items() if k != "history"} for u in users],
               "chart": str(paths["chart"])}
    print(table(users))
    print(json.dumps(summary["targets_met"], indent=2))
    Path(known.json).parent.mkdir(parents=True, exist_ok=True)
    Path(known.json).write_text(json.dumps(summary, indent=2))
    print(f"wrote {known.json}")


if __name__ == "__main__":
    main()
