"""The embedded default stack in one command (``make up`` / ``personalize-stack``):
a local Kafka-protocol broker, the topics, the inference server and the trainer,
each a child process; Ctrl-C stops all of it cleanly.

``--replicas N`` starts N server replicas (each its own engine) on consecutive
ports (gRPC ``--port``+i, HTTP ``--http-port``+i, metrics ``--metrics-port``+2i),
``--trainers M`` M trainers in one consumer group (metrics
``--trainer-metrics-port``+2j, state ``<state dir>-j``); all share the broker and
the adapter store. ``make up REPLICAS=2 TRAINERS=2``.

Point ``--bootstrap-servers`` at a real Kafka cluster to skip the local broker.
Every PERSONALIZE_* environment variable is passed on to the children.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.contract import logs
from services.contract.config import KafkaConfig
from services.devstack.broker import LocalBroker
from services.server.kafka_io import ensure_topics

log = logging.getLogger("personalize.stack")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=".cache/models/SmolLM2-135M-Instruct",
                   help="HF model directory to serve")
    p.add_argument("--bootstrap-servers", default="",
                   help="external Kafka cluster; empty starts the local broker")
    p.add_argument("--broker-port", type=int, default=9092, help="local broker port")
    p.add_argument("--host", default="127.0.0.1", help="address the server binds")
    p.add_argument("--port", type=int, default=50051, help="gRPC port")
    p.add_argument("--metrics-port", type=int, default=9400, help="server /metrics port")
    p.add_argument("--trainer-metrics-port", type=int, default=9401, help="trainer /metrics port")
    p.add_argument("--http-port", type=int,
                   default=int(os.environ.get("PERSONALIZE_SERVER_HTTP_PORT", "8000")),
                   help="HTTP (OpenAI-compatible) port; 0 turns it off")
    p.add_argument("--replicas", type=int, default=1, help="server replicas (one engine each)")
    p.add_argument("--trainers", type=int, default=1, help="trainer processes (one group)")
    p.add_argument("--adapter-store", default=".cache/adapters", help="adapter store root")
    p.add_argument("--state-dir", default=".cache/stack", help="logs of the children")
    p.add_argument("--no-trainer", action="store_true", help="serve only")
    p.add_argument("--ready-timeout", type=float, default=300.0,
                   help="seconds to wait for the server to report SERVING")
    args = p.parse_args(argv)
    if args.replicas < 1 or args.trainers < 0:
        p.error("--replicas must be >= 1 and --trainers >= 0")
    return args


def replica_env(args: argparse.Namespace, i: int) -> dict[str, str]:
    """Ports of server replica ``i`` (0 keeps the given ports)."""
    return {"PERSONALIZE_SERVER_HOST": args.host,
            "PERSONALIZE_SERVER_PORT": str(args.port + i),
            "PERSONALIZE_SERVER_HTTP_PORT": str(args.http_port + i if args.http_port else 0),
            "PERSONALIZE_SERVER_METRICS_PORT": str(args.metrics_port + 2 * i)}


def trainer_env(args: argparse.Namespace, j: int, env: dict[str, str]) -> dict[str, str]:
    """Metrics port and state directory of trainer ``j`` (0 keeps the given ones)."""
    out = {"PERSONALIZE_TRAINER_METRICS_PORT": str(args.trainer_metrics_port + 2 * j)}
    if j:
        base = env.get("PERSONALIZE_TRAINER_STATE_DIR", ".cache/trainer").rstrip("/")
        out["PERSONALIZE_TRAINER_STATE_DIR"] = f"{base}-{j}"
    return out


def _suffix(i: int) -> str:
    return f"-{i}" if i else ""


class ChildExited(RuntimeError):
    """A child process exited while the stack was starting."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        super().__init__(f"{_module(proc)} (pid {proc.pid}) exited with code "
                         f"{proc.returncode} during start-up")


def _module(proc: subprocess.Popen[bytes]) -> str:
    """The module a child runs (``python -m <module>``)."""
    return str(proc.args[-1] if isinstance(proc.args, list) else proc.args)


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def wait_serving(target: str, procs: list[subprocess.Popen[bytes]], timeout_s: float,
                 should_stop: Callable[[], bool] = lambda: False) -> bool:
    """True once the server reports SERVING; False if ``should_stop`` turned true first."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if should_stop():
                return False
            for p in procs:
                if p.poll() is not None:
                    raise ChildExited(p)
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.5)
    raise TimeoutError(f"server at {target} not serving after {timeout_s:.0f}s")


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Within the block SIGTERM (``kill``, ``timeout``, a CI runner) raises
    KeyboardInterrupt as Ctrl-C does, so the ``with`` blocks around a ``child_stack``
    unwind and stop its processes; outside the main thread (where no handler can be set)
    nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


@contextlib.contextmanager
def child_stack(argv: list[str], target: str, env: dict[str, str], log_path: Path,
                ready_timeout_s: float, stop_timeout_s: float,
                cwd: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """``personalize-stack`` with ``argv`` in a child process, yielded once ``target``
    reports SERVING. On exit it is Ctrl-C'd (it stops its children and the broker) and,
    past ``stop_timeout_s``, killed with its process group."""
    with log_path.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "services.devstack.stack", *argv], env=env,
                                cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_serving(target, [proc], ready_timeout_s)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=stop_timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _spawn(module: str, env: dict[str, str], log_path: Path,
           logs_of: dict[int, Path]) -> subprocess.Popen[bytes]:
    out = log_path.open("ab")
    proc = subprocess.Popen([sys.executable, "-m", module], env=env, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)
    logs_of[proc.pid] = log_path
    return proc


def _report_exit(proc: subprocess.Popen[bytes], logs_of: dict[int, Path], when: str) -> None:
    """Logs which child exited and the end of its log, so the cause is on screen."""
    path = logs_of[proc.pid]
    log.error("%s exited with code %s %s; the end of %s:\n%s", _module(proc), proc.returncode,
              when, path, _log_tail(path))


def _stop(procs: list[subprocess.Popen[bytes]], timeout_s: float = 40.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _auth_line(args: argparse.Namespace) -> str:
    """The banner's auth state (the server reads the same PERSONALIZE_SERVER_AUTH_*)."""
    servers = ",".join(f"{args.host}:{args.port + i}" for i in range(args.replicas))
    chat = f"personalize chat --user alice --server {servers}"
    if os.environ.get("PERSONALIZE_SERVER_AUTH_SECRETS") or \
            os.environ.get("PERSONALIZE_SERVER_AUTH_SECRETS_FILE"):
        return ("\n  auth      on: bearer tokens required"
                f'\n  try:      {chat} --token "$(personalize token --user alice)"')
    return ("\n  auth      OFF: anyone who reaches the port can act as any user "
            "(set PERSONALIZE_SERVER_AUTH_SECRETS)"
            f"\n  try:      {chat}")


def _banner(args: argparse.Namespace, trainers: int, bootstrap: str, local_broker: bool,
            state: Path) -> str:
    """What is up and where: one line per replica (its gRPC, then HTTP, address)."""
    lines = ["", "personalize is up"]
    for i in range(args.replicas):
        name = f"replica {i}" if args.replicas > 1 else "gRPC"
        http = f"  HTTP http://{args.host}:{args.http_port + i}" if args.http_port else ""
        lines.append(f"  {name:<9} {args.host}:{args.port + i}  (personalize.v1.Assistant)"
                     + http + f"  metrics http://127.0.0.1:{args.metrics_port + 2 * i}/metrics")
    if args.replicas > 1:
        targets = ",".join(f"{args.host}:{args.port + i}" for i in range(args.replicas))
        lines.append(f"  all       {targets}  (SDK and CLI spread calls over them)")
    for j in range(trainers):
        name = f"trainer {j}" if trainers > 1 else "trainer"
        lines.append(f"  {name:<9} http://127.0.0.1:{args.trainer_metrics_port + 2 * j}/metrics")
    if not trainers:
        lines.append("  trainer   not started")
    lines += [f"  Kafka     {bootstrap}{' (local Tansu broker)' if local_broker else ''}",
              f"  adapters  {Path(args.adapter_store).resolve()}",
              f"  logs      {state.resolve()}/"]
    return "\n".join(lines) + _auth_line(args) + "\nCtrl-C stops everything."


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logs.setup()
    state = Path(args.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    broker = None
    bootstrap = args.bootstrap_servers
    if not bootstrap:
        broker = LocalBroker(port=args.broker_port, log_file=state / "broker.log").start()
        bootstrap = broker.bootstrap
    procs: list[subprocess.Popen[bytes]] = []
    logs_of: dict[int, Path] = {}
    stopping = False

    def request_stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        created = ensure_topics(KafkaConfig(bootstrap_servers=bootstrap))
        log.info("Kafka at %s; created topics: %s", bootstrap, ", ".join(created) or "none")
        # one machine runs everything: the trainer takes one core unless told otherwise
        env = {"PERSONALIZE_TRAINER_TORCH_THREADS": "1", **os.environ,
               "PERSONALIZE_SERVER_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
               "PERSONALIZE_TRAINER_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
               "PERSONALIZE_SERVER_ENGINE_MODEL": args.model,
               "PERSONALIZE_TRAINER_POLICY_MODEL": args.model,
               "PERSONALIZE_SERVER_ADAPTER_STORE": args.adapter_store,
               "PERSONALIZE_TRAINER_ADAPTER_STORE": args.adapter_store}
        for i in range(args.replicas):
            procs.append(_spawn("services.server.main", {**env, **replica_env(args, i)},
                                state / f"server{_suffix(i)}.log", logs_of))
        trainers = 0 if args.no_trainer or \
            importlib.util.find_spec("trainer.loop.service") is None else args.trainers
        for j in range(trainers):
            procs.append(_spawn("trainer.loop.service", {**env, **trainer_env(args, j, env)},
                                state / f"trainer{_suffix(j)}.log", logs_of))
        for i in range(args.replicas):
            try:
                if not wait_serving(f"{args.host}:{args.port + i}", procs, args.ready_timeout,
                                    lambda: stopping):
                    return 130  # Ctrl-C during start-up: the children are stopped below
            except ChildExited as exc:
                _report_exit(exc.proc, logs_of, "during start-up")
                return 1
        print(_banner(args, trainers, bootstrap, broker is not None, state), flush=True)
        while not stopping:
            dead = [p for p in procs if p.poll() is not None]
            if dead:
                _report_exit(dead[0], logs_of, "while serving; stopping the stack")
                return 1
            time.sleep(0.5)
        return 0
    finally:
        log.info("stopping")
        _stop(procs)
        if broker is not None:
            broker.stop()
        log.info("stopped")


if __name__ == "__main__":
    sys.exit(main())
