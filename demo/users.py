"""The cast of simulated users: who prefers what, and who labels for whom.

Fewer than 4 users play the length-and-layout cast (concise vs detailed, then bullets),
which a small host learns within a short run. 4 users or more play the content cast:
formal, casual, examples, warm, then technical, summary, questions, hedged,
second-person, ... so that 4 users cover one conflicting pair (formal vs casual) and
two families independent of it, and 9 users cover 8 families. Past the content cast
the length-and-layout poles follow; after the whole cast, names repeat with a number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from demo.preferences import PREFERENCES, Labeler, Preference

# (user id, preference) in the order users are added
LENGTH_CAST: tuple[tuple[str, str], ...] = (
    ("ana", "concise"), ("ben", "detailed"), ("cai", "bullets"), ("dee", "prose"),
)
CONTENT_CAST: tuple[tuple[str, str], ...] = (
    ("fay", "formal"), ("cas", "casual"), ("eli", "examples"), ("wren", "warm"),
    ("tess", "technical"), ("sam", "summary"), ("quin", "questions"), ("hal", "hedged"),
    ("yuki", "second_person"), ("otto", "on_topic"), ("pia", "plain"), ("cole", "confident"),
    ("ned", "neutral"), ("abe", "abstract"), ("ines", "impersonal"), *LENGTH_CAST,
)
CONTENT_FROM = 4
"""From this many users on, the content cast plays."""


@dataclass(frozen=True)
class SimUser:
    user_id: str
    preference: Preference
    labelers: tuple[Labeler, ...]
    """Everyone who rates this user's answers; each rates every ranked group."""

    @property
    def has_pool(self) -> bool:
        return len(self.labelers) > 1


def cast_for(count: int, preferences: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(name, preference) of ``count`` users: the chosen ``preferences`` in turn (named
    after them), else the cast that fits ``count``."""
    if preferences:
        unknown = [p for p in preferences if p not in PREFERENCES]
        if unknown:
            raise ValueError(f"unknown preferences {unknown}; known: {sorted(PREFERENCES)}")
        cast = tuple((p.replace("_", "-"), p) for p in preferences)
    else:
        cast = CONTENT_CAST if count >= CONTENT_FROM else LENGTH_CAST
    return [(f"{name}{i // len(cast) + 1 if i >= len(cast) else ''}", pref)
            for i, (name, pref) in ((i, cast[i % len(cast)]) for i in range(count))]


def make_users(count: int, noise: float, prefix: str = "",
               preferences: Sequence[str] = ()) -> list[SimUser]:
    """``count`` users (see ``cast_for``), named ``prefix`` + name.

    The last user's answers are labelled by a pool of three: the user, a careful
    helper, and a labeler who misread the instructions and ranks backwards.
    """
    if count < 1:
        raise ValueError("the demo needs at least one user")
    users = []
    for i, (name, pref_name) in enumerate(cast_for(count, preferences)):
        user_id, pref = f"{prefix}{name}", PREFERENCES[pref_name]
        labelers = (Labeler(user_id, pref, noise),)
        if i == count - 1 and count > 1:
            labelers += (Labeler(f"{user_id}-helper", pref, noise),
                         Labeler(f"{user_id}-misreader", pref, noise, confused=True))
        users.append(SimUser(user_id, pref, labelers))
    return users
