"""The live terminal view of a running demo (rich)."""

from __future__ import annotations

import math
from collections import deque

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from demo.driver import Simulation, UserState
from demo.evaluation import worst
from demo.stats import Tally, agree, fmt_rate


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.0%}"


def _win_style(win: Tally) -> str:
    if not win.excludes_half():
        return ""  # not told apart from the base model yet
    return "bold green" if win.rate >= 0.75 else "green" if win.rate > 0.5 else "red"


def _leak(state: UserState) -> Text:
    top = worst(state.leaks)
    if top is None or not top.tally.n:
        return Text("-")
    lo, hi = top.interval_points()
    return Text(f"{top.points:+.0f} [{lo:+.0f},{hi:+.0f}] {top.preference}",
                style="red" if top.leaks() else "")


def _online(state: UserState) -> Text:
    """The newest version's online win rate vs base, red when it disagrees with the
    simulated one of the same version."""
    check = state.online_check
    if check is None:
        return Text("-")
    version, simulated, online = check
    verdict = agree(simulated, online)
    return Text(f"{version}: {fmt_rate(online)} {'agrees' if verdict else 'DISAGREES'}",
                style="" if verdict else "red")


def _identity(state: UserState) -> Text:
    ledger = state.identity
    if not ledger.checks:
        return Text("-")
    return Text(f"{ledger.checks - ledger.mismatches}/{ledger.checks}",
                style="red" if ledger.mismatches else "green")


def _labelers(state: UserState) -> str:
    if not state.user.has_pool:
        return ""
    return ", ".join(f"{lid.removeprefix(state.user.user_id + '-') or 'self'} "
                     f"{agree:.2f}{' FLAGGED' if flagged else ''}"
                     for lid, agree, flagged in state.labelers)


class LiveView:
    """Renders the users' table and the latest events; feed it with ``event``."""

    def __init__(self, sim: Simulation, duration_s: float, events: int = 6) -> None:
        self._sim = sim
        self._duration = duration_s
        self._events: deque[str] = deque(maxlen=events)

    def event(self, line: str) -> None:
        self._events.append(f"[{self._sim.elapsed():5.0f}s] {line}")

    def __rich__(self) -> Group:
        table = Table(title=f"personalize demo: {self._sim.elapsed():.0f}s of "
                            f"{self._duration:.0f}s", expand=True)
        for col, justify in (("user", "left"), ("prefers", "left"),
                             ("feedback", "right"), ("adapter", "center"),
                             ("RM acc (shared)", "right"),
                             ("win vs base [95%] n", "right"),
                             ("online vs base [95%] n", "right"), ("leakage pts", "right"),
                             ("same bytes", "right"), ("last decision", "left"),
                             ("labelers (agreement)", "left")):
            table.add_column(col, justify=justify)  # type: ignore[arg-type]
        for s in self._sim.states.values():
            table.add_row(
                s.user.user_id, s.user.preference.name, str(s.feedback),
                s.version or "base",
                f"{_pct(s.rm_accuracy)} ({_pct(s.rm_accuracy_shared)})",
                Text(fmt_rate(s.win), style=_win_style(s.win)), _online(s), _leak(s),
                _identity(s),
                s.decision[:40], _labelers(s))
        events = Text("\n".join(self._events) or "waiting for the first events", style="dim")
        return Group(table, Panel(events, title="events", title_align="left"))
