"""Ports picked for child processes stay clear of the ports the kernel hands out
itself (vLLM's rendezvous socket, outgoing connections), and are never reused."""

from __future__ import annotations

import socket

from services.devstack.broker import _ephemeral_range, free_port


def test_free_ports_are_distinct_bindable_and_below_the_kernels_range() -> None:
    low, _high = _ephemeral_range()
    ports = [free_port() for _ in range(40)]
    assert len(set(ports)) == len(ports)
    assert all(1024 < p < low for p in ports), ports
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[-1]))
