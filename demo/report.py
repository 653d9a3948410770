"""What a demo run leaves behind: a PNG chart of the curves and a markdown report."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from demo.driver import Simulation, UserState


def summary(sim: Simulation) -> list[dict[str, Any]]:
    """One row per user, JSON-ready (NaN becomes None)."""
    rows = []
    for s in sim.states.values():
        others = list(s.cross_win.values())
        rows.append({
            "user": s.user.user_id, "preference": s.user.preference.name,
            "feedback_events": s.feedback, "errors": s.errors, "adapter_version": s.version,
            "rm_accuracy": _num(s.rm_accuracy), "rm_accuracy_shared": _num(s.rm_accuracy_shared),
            "win_rate": s.win_rate, "best_win_rate": s.best_win_rate,
            "feedback_at_best": s.feedback_at_best,
            "win_rate_under_others": s.cross_win,
            "leakage_points": _leakage(others),
            "labelers": [{"labeler_id": lid, "agreement": a, "flagged": f}
                         for lid, a, f in s.labelers],
            "last_decision": s.decision,
            "history": [asdict(p) for p in s.history],
        })
    return rows


def _num(x: float) -> float | None:
    return None if math.isnan(x) else x


def _leakage(others: list[float]) -> float:
    """Points by which the adapter beats the base model under other users' preferences,
    above chance (50%), averaged over the other users; 0 when it does not."""
    if not others:
        return 0.0
    return 100 * sum(max(0.0, w - 0.5) for w in others) / len(others)


def write_chart(sim: Simulation, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_win, ax_rm) = plt.subplots(1, 2, figsize=(12, 4.5), sharex=True)
    for s in sim.states.values():
        t = [p.t / 60 for p in s.history]
        label = f"{s.user.user_id} ({s.user.preference.name})"
        ax_win.step(t, [100 * p.win_rate for p in s.history], where="post", label=label)
        ax_rm.plot(t, [100 * p.rm_accuracy for p in s.history], label=label)
    ax_win.axhline(50, color="grey", lw=0.8, ls="--")
    ax_win.set(title="win rate of the served adapter vs the base model",
               xlabel="minutes", ylabel="% (hidden preference, held-out prompts)", ylim=(0, 100))
    ax_rm.set(title="personal reward model, held-out pairwise accuracy", xlabel="minutes",
              ylabel="%", ylim=(0, 100))
    ax_win.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def write_report(sim: Simulation, settings: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    rows = summary(sim)
    chart = write_chart(sim, out / "curves.png")
    data = out / "results.json"
    data.write_text(json.dumps({"settings": settings, "users": rows}, indent=2))
    lines = [
        "# personalize demo report", "",
        f"{len(rows)} simulated users, {sim.elapsed() / 60:.1f} minutes, model "
        f"`{settings.get('model', '')}`. Every figure below was measured through the "
        "public gRPC API. Win rates compare the answers of the adapter each user is "
        "served with the base model's, on held-out prompts, under the user's hidden "
        "preference (50% = no difference).", "",
        "![curves](curves.png)", "",
        _md_row(["user", "hidden preference", "feedback", "adapter", "RM acc",
                 "shared RM acc", "win rate", "best (at feedback)", "leakage (pts)"]),
        _md_row(["---"] * 9),
    ]
    for r, s in zip(rows, sim.states.values(), strict=True):
        lines.append(_md_row([
            r["user"], s.user.preference.description, str(r["feedback_events"]),
            r["adapter_version"] or "base", _fmt(r["rm_accuracy"]),
            _fmt(r["rm_accuracy_shared"]), _fmt(r["win_rate"]),
            f"{_fmt(r['best_win_rate'])} ({r['feedback_at_best']})",
            f"{r['leakage_points']:.1f}"]))
    lines += ["", *_labeler_notes(list(sim.states.values())), "",
              "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()), ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return {"report": report, "chart": chart, "data": data}


def _fmt(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.0%}"


def _labeler_notes(states: list[UserState]) -> list[str]:
    notes = []
    for s in states:
        if s.user.has_pool and s.labelers:
            scores = ", ".join(f"`{lid}` {a:.2f}{' (flagged)' if f else ''}"
                               for lid, a, f in s.labelers)
            notes.append(f"Labelers of {s.user.user_id} (agreement with the others; one "
                         f"misread the instructions and ranks backwards): {scores}.")
    return notes
