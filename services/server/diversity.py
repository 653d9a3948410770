"""Diversified candidates (pure): the temperature each candidate of a Generate call samples at.

When a client asks for several candidates to rank, the server may spread their
temperatures around the requested one, so that the candidates differ more and a
ranking of them says more about the user's taste. With ``spread`` s > 0, candidate i
of n (n >= 2) samples at ``t + s * (i / (n - 1) - 1/2)``: evenly from ``t - s/2`` to
``t + s/2``, in candidate order, clamped to ``[MIN_TEMPERATURE, max_temperature]``.
Greedy requests (t = 0) and single-candidate calls keep the requested temperature; the
plan depends only on the request, so seeded calls stay reproducible.
"""

from __future__ import annotations

import math

MIN_TEMPERATURE = 0.05
"""Lowest temperature a spread may give a candidate: a spread never turns a sampled
candidate into a greedy one."""


def candidate_temperatures(requested: float, num_candidates: int, spread: float,
                           max_temperature: float) -> list[float]:
    """The sampling temperature of each of ``num_candidates`` candidates, by index."""
    if num_candidates < 2 or spread <= 0 or requested <= 0:
        return [requested] * num_candidates
    high = max(max_temperature, MIN_TEMPERATURE)
    return [round(min(max(requested + spread * (i / (num_candidates - 1) - 0.5),
                          MIN_TEMPERATURE), high), 6)
            for i in range(num_candidates)]


def check_spread(spread: float) -> str:
    """Why ``spread`` is not a valid ``candidate_temperature_spread`` ("" when it is)."""
    if not math.isfinite(spread) or spread < 0:
        return f"candidate_temperature_spread must be a finite number >= 0, got {spread}"
    return ""
