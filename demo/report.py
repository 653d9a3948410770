"""What a demo run leaves behind: a PNG chart of the curves and a markdown report."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from demo.driver import Simulation, UserState
from demo.evaluation import worst
from demo.stats import agree, difference, fmt_rate


def summary(sim: Simulation) -> list[dict[str, Any]]:
    """One row per user, JSON-ready (NaN becomes None)."""
    rows = []
    for s in sim.states.values():
        lo, hi = s.win.interval()
        top = worst(s.leaks)
        pref = s.user.preference
        rows.append({
            "user": s.user.user_id, "preference": pref.name, "family": pref.family.name,
            "kind": pref.kind, "feedback_events": s.feedback, "rankings": s.rankings,
            "errors": s.errors, "adapter_version": s.version,
            "rm_accuracy": _num(s.rm_accuracy), "rm_accuracy_shared": _num(s.rm_accuracy_shared),
            "win_rate": s.win.rate, "win_lo": lo, "win_hi": hi, "comparisons": s.win.n,
            "win": s.win.as_dict(), "best_win_rate": s.best.rate, "best_win": s.best.as_dict(),
            "feedback_at_best": s.feedback_at_best,
            "online_checks": online_checks(s),
            "leakage": [lk.as_dict() for lk in s.leaks],
            "leakage_worst": top.as_dict() if top else None,
            "identity": s.identity.as_dict(),
            "labelers": [{"labeler_id": lid, "agreement": a, "flagged": f}
                         for lid, a, f in s.labelers],
            "last_decision": s.decision,
            "history": [{k: _num(v) if isinstance(v, float) else v
                         for k, v in asdict(p).items()} for p in s.history],
        })
    return rows


def _num(x: float) -> float | None:
    return None if math.isnan(x) else x


def write_chart(sim: Simulation, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_win, ax_rm) = plt.subplots(1, 2, figsize=(12, 4.5), sharex=True)
    for s in sim.states.values():
        t = [p.t / 60 for p in s.history]
        label = f"{s.user.user_id} ({s.user.preference.name})"
        line, = ax_win.step(t, [100 * p.win_rate for p in s.history], where="post",
                            label=label)
        ax_win.fill_between(t, [100 * p.win_lo for p in s.history],
                            [100 * p.win_hi for p in s.history], step="post",
                            where=[p.version != "" for p in s.history],  # once measured
                            color=line.get_color(), alpha=0.12)
        ax_rm.plot(t, [100 * p.rm_accuracy for p in s.history], label=label)
    ax_win.axhline(50, color="grey", lw=0.8, ls="--")
    ax_win.set(title="win rate vs the base model (shaded: 95% interval)",
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
    data.write_text(json.dumps({"settings": settings, "users": rows,
                                "identity": identity_total(rows)}, indent=2))
    lines = [
        "# personalize demo report", "",
        f"{len(rows)} simulated users, {sim.elapsed() / 60:.1f} minutes, model "
        f"`{settings.get('model', '')}`. Every figure below was measured through the "
        "public gRPC API. Win rates compare the answers of the adapter each user is "
        "served with the base model's, on held-out prompts, under the user's hidden "
        "preference (50% = no difference), with a 95% Wilson interval and the number "
        "of comparisons. Leakage is the largest shift, in points away from 50%, of the "
        "win rate under the preferences independent of the user's (docs/demo.md). The "
        "online win rate is the trainer's own measure of the same served version against "
        "the base model, from the user's rankings of interleaved comparison candidates; "
        "it agrees with the simulated one when the 95% interval of their difference "
        "(Newcombe) holds 0.", "",
        "![curves](curves.png)", "",
        _md_row(["user", "hidden preference", "feedback (rankings)", "adapter", "RM acc",
                 "shared RM acc", "win rate vs base [95%] n",
                 "online vs base per version [95%] n, vs simulated",
                 "best (at feedback)", "worst leakage, pts [interval]",
                 "byte-identical probes"]),
        _md_row(["---"] * 11),
    ]
    for r, s in zip(rows, sim.states.values(), strict=True):
        lines.append(_md_row([
            r["user"], f"{r['preference']}: {s.user.preference.description}",
            f"{r['feedback_events']} ({r['rankings']})", r["adapter_version"] or "base",
            _fmt(r["rm_accuracy"]), _fmt(r["rm_accuracy_shared"]), fmt_rate(s.win),
            fmt_online(r),
            f"{fmt_rate(s.best)} ({r['feedback_at_best']})" if s.best.n else "-",
            fmt_leak(r["leakage_worst"]), fmt_identity(r["identity"])]))
    lines += ["", *_leakage_notes(rows), "", *_labeler_notes(list(sim.states.values())), "",
              "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()), ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return {"report": report, "chart": chart, "data": data}


def identity_total(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Byte-identity probes over all users."""
    keys = ("checks", "mismatches", "skipped")
    return {k: sum(r["identity"][k] for r in rows) for k in keys}


def online_checks(state: UserState) -> list[dict[str, Any]]:
    """Every version measured both ways: simulated and online tallies, the difference
    (simulated - online) with its interval, and whether they agree."""
    out = []
    for version, online in sorted(state.online.items(), key=lambda kv: int(kv[0][1:])):
        simulated = state.simulated.get(version)
        if simulated is None or not online.n:
            continue
        out.append({"version": version, "simulated": simulated.as_dict(),
                    "online": online.as_dict(), "agrees": agree(simulated, online),
                    "difference": list(difference(simulated, online))})
    return out


def fmt_online(row: dict[str, Any]) -> str:
    """Each version measured both ways: ``v2 61% [48-73%] n=52, agrees (-5 pts [-19,
    +9])``; ``-`` when none is."""
    parts = []
    for c in row["online_checks"]:
        online, (d, lo, hi) = c["online"], (100 * x for x in c["difference"])
        parts.append(f"{c['version']} {online['rate']:.0%} [{online['lo']:.0%}-"
                     f"{online['hi']:.0%}] n={online['n']}, "
                     f"{'agrees' if c['agrees'] else 'DISAGREES'} "
                     f"({d:+.0f} pts [{lo:+.0f}, {hi:+.0f}])")
    return "; ".join(parts) or "-"


def fmt_leak(leak: dict[str, Any] | None) -> str:
    if leak is None or not leak["n"]:
        return "-"
    flag = " LEAKS" if leak["leaks"] else ""
    return (f"{leak['points']:+.0f} [{leak['lo']:+.0f}, {leak['hi']:+.0f}] "
            f"({leak['preference']}){flag}")


def fmt_identity(identity: dict[str, int]) -> str:
    if not identity["checks"]:
        return "-"
    return f"{identity['checks'] - identity['mismatches']}/{identity['checks']}"


def _leakage_notes(rows: list[dict[str, Any]]) -> list[str]:
    notes = []
    for r in rows:
        if any(lk["n"] for lk in r["leakage"]):
            shifts = ", ".join(f"{lk['preference']} {lk['points']:+.0f}" for lk in r["leakage"])
            notes.append(f"Leakage of {r['user']} (points vs base, intervals at "
                         f"{r['leakage'][0]['confidence']:.1%}): {shifts}.")
    return notes


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
