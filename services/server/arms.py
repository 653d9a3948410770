"""Interleaved comparisons (pure): which candidate of a Generate call, if any, comes from
a comparison arm instead of the user's served adapter.

A call that asks for two or more candidates of a user served by an adapter may, with
probability ``rate``, have one candidate (at a uniformly drawn index) answered by the
base model or by the served version's parent; the user's ranking of the candidates
then compares the served version with that arm. The arm is recorded on Kafka and
never shown to the client. Calls for one candidate, calls for the base model, and
seeded calls (their answers must be reproducible) are never interleaved.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

Arm = Literal["served", "base", "parent"]


@dataclass(frozen=True)
class ArmChoice:
    """One candidate of a call answered by a comparison arm."""

    index: int
    """The candidate index the arm answers."""
    arm: Arm
    """``base`` or ``parent``."""
    version: str
    """The parent arm's adapter version; empty for ``base``."""


def choose_arm(rng: random.Random, rate: float, num_candidates: int, served_version: str,
               parent_version: str, seeded: bool = False) -> ArmChoice | None:
    """The comparison arm of one call, or None (every candidate from the served adapter).

    ``served_version`` is the user's adapter ("" : the base model serves, so there is
    nothing to compare); ``parent_version`` the loadable parent ("" : only the base arm).
    """
    if num_candidates < 2 or not served_version or seeded or rate <= 0:
        return None
    if rng.random() >= rate:
        return None
    arms: list[tuple[Arm, str]] = [("base", "")]
    if parent_version:
        arms.append(("parent", parent_version))
    arm, version = arms[rng.randrange(len(arms))]
    return ArmChoice(rng.randrange(num_candidates), arm, version)
