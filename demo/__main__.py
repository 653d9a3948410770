"""``make demo``: the whole local stack, driven by simulated users with hidden,
conflicting preferences through the public gRPC API, with a live view; leaves a chart
and a report behind.

    python -m demo --users 4 --duration 900 --out demo-output
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.live import Live

from demo.driver import DriveConfig, Simulation
from demo.preferences import PREFERENCES
from demo.report import write_report
from demo.stack import StackPorts, TrainerProfile, demo_stack
from demo.users import make_users
from demo.view import LiveView
from services.client.sdk import AssistantClient
from services.contract.config import recordable_environment
from services.devstack.stack import sigterm_unwinds


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=4,
                   help="simulated users (default 4: formal, casual, examples, warm; more "
                        "continue the content cast: technical, summary, questions, hedged, "
                        "...; 1-3 play length and layout: concise, detailed, bullets)")
    p.add_argument("--preferences", default="",
                   help="comma-separated preferences to cycle through instead of the cast "
                        f"(any of: {', '.join(PREFERENCES)})")
    p.add_argument("--duration", type=float, default=900.0,
                   help="seconds of feedback after the stack is up (default 900)")
    p.add_argument("--model", default=".cache/models/SmolLM2-135M-Instruct",
                   help="HF model directory served and trained")
    p.add_argument("--out", default="", help="output folder (default demo-output/<time>)")
    p.add_argument("--noise", type=float, default=0.2,
                   help="labelers' Gumbel noise on preference scores (default 0.2)")
    p.add_argument("--pause", type=float, default=DriveConfig.pause_s,
                   help="mean seconds each user waits between feedback events")
    p.add_argument("--max-tokens", type=int, default=DriveConfig.max_tokens)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--port-base", type=int, default=50071,
                   help="first of the ports the demo stack uses (gRPC; then metrics, "
                        "trainer metrics, broker)")
    p.add_argument("--headless", action="store_true", help="log lines instead of the live view")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Path]:
    """The demo; SIGTERM ends it like Ctrl-C: the report is written, the stack stopped."""
    with sigterm_unwinds():
        return _run(args)


def _run(args: argparse.Namespace) -> dict[str, Path]:
    out = Path(args.out or f"demo-output/{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and any(out.iterdir()):  # its adapters and journal would carry over
        raise SystemExit(f"{out} is not empty: a run starts from nothing; pick another --out")
    out.mkdir(parents=True, exist_ok=True)
    console = Console()
    users = make_users(args.users, args.noise, preferences=_names(args.preferences))
    drive = DriveConfig(max_tokens=args.max_tokens, pause_s=args.pause, seed=args.seed)
    profile = TrainerProfile(ppo_max_new_tokens=args.max_tokens)
    ports = StackPorts.from_base(args.port_base)
    settings = {"model": args.model, "users": args.users,
                "preferences": [u.preference.name for u in users], "duration_s": args.duration,
                "noise": args.noise, **asdict(drive), **asdict(profile),
                "environment": recordable_environment(os.environ)}
    console.print(f"starting the stack (logs in {out / 'stack'}) ...")
    with demo_stack(args.model, out, ports, profile) as target, \
            AssistantClient(target, timeout_s=300) as client:
        console.print(f"stack up at {target}; measuring the base model ...")
        sim = Simulation(client, users, drive)
        view = LiveView(sim, args.duration)
        sim.on_event = view.event if not args.headless else console.log
        sim.start()
        try:
            if args.headless:
                _wait(sim, args.duration, console)
            else:
                with Live(view, console=console, refresh_per_second=2):
                    _wait(sim, args.duration, None)
        except KeyboardInterrupt:
            console.print("interrupted: writing what was measured so far")
        finally:
            sim.stop()
        paths = write_report(sim, settings, out)
    console.print(LiveView(sim, args.duration))
    for name, path in paths.items():
        console.print(f"{name:7s} {path}")
    return paths


def _names(csv: str) -> list[str]:
    return [n.strip() for n in csv.split(",") if n.strip()]


def _wait(sim: Simulation, duration_s: float, console: Console | None) -> None:
    next_log = 60.0
    while sim.elapsed() < duration_s:
        time.sleep(1)
        if console is not None and sim.elapsed() >= next_log:
            next_log += 60
            console.log(json.dumps({s.user.user_id: {"feedback": s.feedback,
                                                     "version": s.version,
                                                     "win_rate": round(s.win.rate, 3),
                                                     "comparisons": s.win.n}
                                    for s in sim.states.values()}))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    run(parse(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
