"""The demo's simulated users against the real server (tiny model) and broker: feedback
is acknowledged, statuses are read, and a newly served adapter is measured against
the base model; the report, chart and JSON are written."""

from __future__ import annotations

import json
import time
from pathlib import Path

from demo.driver import DriveConfig, Simulation
from demo.report import write_report
from demo.users import make_users
from services.client.sdk import AssistantClient
from tests.support.adapters import make_adapter, publish


def _wait(predicate, timeout_s: float, events: list[str]) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out; events: {events[-5:]}"
        time.sleep(0.2)


def test_simulated_users_rate_and_measure_a_new_adapter(server, broker, tiny_model_dir: Path,
                                                        tmp_path: Path) -> None:
    users = make_users(3, noise=0.3, prefix=f"sim{time.time_ns() % 10**6}")
    cfg = DriveConfig(max_tokens=12, pause_s=0.05, eval_samples=5, poll_s=0.3)  # 2 calls each
    events: list[str] = []
    with AssistantClient(f"127.0.0.1:{server.port}", timeout_s=60) as client:
        sim = Simulation(client, users, cfg, on_event=events.append)
        sim.start()
        try:
            states = list(sim.states.values())
            _wait(lambda: all(s.feedback >= 3 for s in states), 90, events)
            target = states[0]
            assert target.version == "" and target.win_rate == 0.5
            manifest = publish(server.store, broker.bootstrap, "adapter-updates",
                               target.user.user_id,
                               make_adapter(tiny_model_dir, tmp_path / "a", seed=5),
                               server.engine.model_id)
            _wait(lambda: target.version == manifest.version, 60, events)
        finally:
            sim.stop()
        accepted = client.status(states[-1].user.user_id).feedback_accepted
    # every event was acknowledged; the pool user's three labelers all rated
    assert all(s.errors == 0 for s in states), events
    assert accepted >= 3 * states[-1].feedback
    # the adapter's answers differ from the base model's, so the win rate was measured
    assert 0.0 <= target.win_rate <= 1.0
    assert set(target.cross_win) == {s.user.user_id for s in states[1:]}
    assert any("now served v1" in e for e in events)
    assert all(s.history for s in states)
    assert states[1].version == "" and states[1].win_rate == 0.5  # nobody else moved
    paths = write_report(sim, {"model": "tiny"}, tmp_path / "out")
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(paths["data"].read_text())
    assert [u["user"] for u in data["users"]] == [u.user_id for u in users]
    assert data["users"][0]["adapter_version"] == "v1"
    assert "| " + users[0].user_id in paths["report"].read_text()
