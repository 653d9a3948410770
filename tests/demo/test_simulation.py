"""The demo's simulated users against the real server (tiny model) and broker: feedback
is acknowledged and statuses are read; when a user is served an adapter made to prefer
short answers, its measured win rate under "concise" beats the base model with an
interval above 50% over every comparison, while the other users' answers to a fixed
prompt and seed stay byte-identical; the report, chart and JSON are written."""

from __future__ import annotations

import json
import time
from pathlib import Path

from demo.driver import DriveConfig, Simulation
from demo.prompts import EVAL_PROMPTS
from demo.report import write_report
from demo.users import make_users
from services.client.sdk import AssistantClient
from tests.demo.steer import make_terse_adapter
from tests.support.adapters import publish


def _wait(predicate, timeout_s: float, events: list[str]) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out; events: {events[-5:]}"
        time.sleep(0.2)


def test_an_adapter_made_to_prefer_short_answers_wins_and_leaves_others_untouched(
        server, broker, tiny_model_dir: Path, tmp_path: Path) -> None:
    terse = make_terse_adapter(tiny_model_dir, tmp_path / "terse")
    users = make_users(3, noise=0.3, prefix=f"sim{time.time_ns() % 10**6}")
    assert [u.preference.name for u in users] == ["concise", "detailed", "bullets"]
    # 5 samples: 2 calls per prompt; a low temperature lets the adapter's end token win
    cfg = DriveConfig(max_tokens=12, pause_s=0.05, eval_samples=5, eval_temperature=0.3,
                      poll_s=0.3)
    events: list[str] = []
    with AssistantClient(f"127.0.0.1:{server.port}", timeout_s=60) as client:
        sim = Simulation(client, users, cfg, on_event=events.append)
        sim.start()
        target, *others = sim.states.values()
        before = target.identity.reference
        try:
            _wait(lambda: all(s.feedback >= 3 for s in sim.states.values()), 90, events)
            assert target.version == "" and target.win.n == 0
            manifest = publish(server.store, broker.bootstrap, "adapter-updates",
                               target.user.user_id, terse, server.engine.model_id)
            _wait(lambda: target.version == manifest.version, 60, events)
            _wait(lambda: all(s.identity.checks for s in others), 30, events)
        finally:
            sim.stop()
        after = sim.probe(target.user.user_id)
        accepted = client.status(others[-1].user.user_id).feedback_accepted
    # every event was acknowledged; the pool user's three labelers all rated
    assert all(s.errors == 0 for s in sim.states.values()), events
    assert accepted >= 3 * others[-1].feedback
    # the adapter's answers beat the base model's on every held-out comparison counted
    assert target.win.n == EVAL_PROMPTS * cfg.eval_samples
    assert target.win.rate >= 0.9 and target.win.interval()[0] > 0.5, target.win
    assert any(f"now served {manifest.version}" in e and "n=40" in e for e in events)
    # nobody else moved: no adapter, nothing measured, answers byte-identical
    for s in others:
        assert s.version == "" and s.win.n == 0
        assert s.identity.checks >= 1 and s.identity.mismatches == 0, (s.user.user_id, events)
    # ... and the probe would have seen a change: the target's own answers did change
    assert before is not None and after.version == manifest.version
    assert after.texts != before.texts
    paths = write_report(sim, {"model": "tiny"}, tmp_path / "out")
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(paths["data"].read_text())
    assert [u["user"] for u in data["users"]] == [u.user_id for u in users]
    row = data["users"][0]
    assert row["adapter_version"] == manifest.version and row["comparisons"] == 40
    assert row["win_lo"] > 0.5 and row["win"]["n"] == 40
    assert data["identity"]["checks"] >= 2 and data["identity"]["mismatches"] == 0
    report = paths["report"].read_text()
    assert "| " + users[0].user_id in report and "n=40" in report
