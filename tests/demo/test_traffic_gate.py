"""The simulation's byte-identity probes run alone: a probe waits for the users'
requests in flight and holds new ones back until it is done."""

from __future__ import annotations

import threading

from demo.driver import TrafficGate


def test_a_probe_waits_for_requests_in_flight_and_holds_new_ones_back() -> None:
    gate, log = TrafficGate(), []
    in_request, release_request = threading.Event(), threading.Event()
    in_probe, release_probe = threading.Event(), threading.Event()

    def request(name: str, hold: threading.Event | None) -> None:
        with gate.request():
            log.append(f"{name} in")
            if hold is not None:
                in_request.set()
                hold.wait(5)
            log.append(f"{name} out")

    def probe() -> None:
        with gate.alone():
            log.append("probe in")
            in_probe.set()
            release_probe.wait(5)
            log.append("probe out")

    first = threading.Thread(target=request, args=("first", release_request))
    first.start()
    assert in_request.wait(5)
    prober = threading.Thread(target=probe)
    prober.start()
    assert not in_probe.wait(0.2), "the probe waits for the request in flight"
    second = threading.Thread(target=request, args=("second", None))
    second.start()
    release_request.set()
    assert in_probe.wait(5)
    second.join(0.2)
    assert second.is_alive(), "a new request waits for the probe"
    release_probe.set()
    for t in (first, prober, second):
        t.join(5)
    assert log == ["first in", "first out", "probe in", "probe out", "second in", "second out"]
