"""Diversified candidates: the temperature plan of a call (pure), and the config check
that refuses a bad spread at start-up."""

from __future__ import annotations

import pytest

from services.contract.config import ConfigError, load
from services.server.config import ServerConfig
from services.server.diversity import MIN_TEMPERATURE, candidate_temperatures


def reference(t: float, n: int, spread: float, high: float) -> list[float]:
    """The plan as a plain loop: evenly from t - spread/2 to t + spread/2, clamped."""
    out = []
    for i in range(n):
        value = t - spread / 2 + spread * i / (n - 1)
        out.append(min(max(value, MIN_TEMPERATURE), high))
    return out


@pytest.mark.parametrize(("t", "n", "spread", "high"), [
    (0.7, 4, 0.6, 2.0), (0.7, 2, 1.0, 2.0), (1.0, 3, 0.4, 2.0), (0.7, 4, 2.0, 1.2),
    (0.1, 4, 1.0, 2.0), (1.9, 3, 1.0, 2.0),
])
def test_plan_matches_the_reference_loop(t: float, n: int, spread: float, high: float) -> None:
    plan = candidate_temperatures(t, n, spread, high)
    assert plan == pytest.approx(reference(t, n, spread, high), abs=1e-6)
    assert all(MIN_TEMPERATURE <= x <= high for x in plan)


def test_spread_is_even_and_centred_on_the_request() -> None:
    assert candidate_temperatures(0.7, 4, 0.6, 2.0) == pytest.approx([0.4, 0.6, 0.8, 1.0])
    assert candidate_temperatures(0.7, 2, 0.6, 2.0) == pytest.approx([0.4, 1.0])
    assert candidate_temperatures(0.7, 3, 0.6, 2.0) == pytest.approx([0.4, 0.7, 1.0])


def test_clamped_to_the_server_limits() -> None:
    assert candidate_temperatures(1.8, 3, 1.0, 2.0) == pytest.approx([1.3, 1.8, 2.0])
    assert candidate_temperatures(0.2, 3, 1.0, 2.0) == pytest.approx([MIN_TEMPERATURE, 0.2, 0.7])


@pytest.mark.parametrize(("t", "n", "spread"), [(0.0, 4, 1.0), (0.7, 1, 1.0), (0.7, 4, 0.0)])
def test_untouched_when_greedy_single_or_off(t: float, n: int, spread: float) -> None:
    assert candidate_temperatures(t, n, spread, 2.0) == [t] * n


def test_the_plan_depends_only_on_the_request() -> None:
    assert candidate_temperatures(0.9, 4, 0.8, 2.0) == candidate_temperatures(0.9, 4, 0.8, 2.0)


@pytest.mark.parametrize("bad", ["-0.1", "nan", "inf"])
def test_a_bad_spread_is_refused_at_start_up(bad: str) -> None:
    env = {"PERSONALIZE_SERVER_CANDIDATE_TEMPERATURE_SPREAD": bad}
    with pytest.raises(ConfigError, match="candidate_temperature_spread"):
        load(ServerConfig, "server", env=env)


def test_a_spread_loads_from_the_environment() -> None:
    env = {"PERSONALIZE_SERVER_CANDIDATE_TEMPERATURE_SPREAD": "0.8"}
    assert load(ServerConfig, "server", env=env).candidate_temperature_spread == 0.8
    assert ServerConfig().candidate_temperature_spread == 0.0
