"""The live view and the report show each win rate with its interval and number of
comparisons, the largest leakage shift and the byte-identity checks (no server)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from demo.driver import DriveConfig, Simulation
from demo.evaluation import IdentityLedger, Leak
from demo.report import write_report
from demo.stats import Tally
from demo.users import make_users
from demo.view import LiveView


def _sim() -> Simulation:
    sim = Simulation(None, make_users(4, 0.2), DriveConfig())  # type: ignore[arg-type]
    fay, cas, *_ = sim.states.values()
    fay.win, fay.version, fay.feedback, fay.rankings = Tally(40, 4, 4), "v2", 30, 21
    fay.simulated = {"v1": Tally(20, 4, 24), "v2": fay.win}
    fay.online = {"v1": Tally(5, 0, 7), "v2": Tally(20, 0, 6)}  # the trainer's tallies
    cas.win, cas.version = Tally(40, 0, 8), "v1"
    cas.simulated, cas.online = {"v1": cas.win}, {"v1": Tally(3, 0, 17), "v0": Tally(1, 0, 0)}
    fay.leaks = [Leak("bullets", Tally(30, 0, 18), 0.994), Leak("examples", Tally(2, 44, 2), 0.994)]
    cas.identity = IdentityLedger(checks=3, mismatches=1)
    return sim


def test_the_live_view_shows_intervals_leakage_and_identity() -> None:
    console = Console(file=io.StringIO(), width=220)
    console.print(LiveView(_sim(), 600))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "88% [75%-94%] n=48" in text
    assert "+12" in text and "bullets" in text  # the largest shift, signed
    assert "2/3" in text  # one of three probes differed
    assert "v2: 77% [58%-89%] n=26 agrees" in text and "v1: 15% [5%-36%] n=20 DISAGREES" \
        in text


def test_the_report_and_results_carry_intervals_leakage_and_identity(tmp_path: Path) -> None:
    paths = write_report(_sim(), {"model": "none"}, tmp_path)
    data = json.loads(paths["data"].read_text())
    fay = data["users"][0]
    assert fay["comparisons"] == 48 and fay["win"]["wins"] == 40
    assert 0.75 < fay["win_lo"] < fay["win_rate"] < fay["win_hi"]
    assert fay["leakage_worst"]["preference"] == "bullets" and fay["leakage_worst"]["points"] > 12
    assert [lk["preference"] for lk in fay["leakage"]] == ["bullets", "examples"]
    assert data["identity"] == {"checks": 3, "mismatches": 1, "skipped": 0}
    report = paths["report"].read_text()
    assert "n=48" in report and "2/3" in report and "Leakage of fay" in report
    assert [c["version"] for c in fay["online_checks"]] == ["v1", "v2"]
    v2 = fay["online_checks"][1]
    assert v2["online"]["n"] == 26 and v2["agrees"] is True
    d, lo, hi = v2["difference"]
    assert lo < 0 < hi and d == pytest.approx(42 / 48 - 20 / 26)
    assert [c["agrees"] for c in data["users"][1]["online_checks"]] == [False]  # v0 unmeasured
    assert data["users"][2]["online_checks"] == []
    assert "v2 77% [58%-89%] n=26, agrees (+" in report and "DISAGREES" in report
