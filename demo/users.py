"""The cast of simulated users: who prefers what, and who labels for whom."""

from __future__ import annotations

from dataclasses import dataclass

from demo.preferences import PREFERENCES, Labeler, Preference

# (user id, preference) in the order users are added; neighbours conflict.
CAST: tuple[tuple[str, str], ...] = (
    ("ana", "concise"),
    ("ben", "detailed"),
    ("cai", "bullets"),
    ("dee", "prose"),
)


@dataclass(frozen=True)
class SimUser:
    user_id: str
    preference: Preference
    labelers: tuple[Labeler, ...]
    """Everyone who rates this user's answers; each rates every ranked group."""

    @property
    def has_pool(self) -> bool:
        return len(self.labelers) > 1


def make_users(count: int, noise: float, prefix: str = "") -> list[SimUser]:
    """``count`` users cycling through the cast (``ana``, ``ben``, ... then ``ana2``...).

    The last user's answers are labelled by a pool of three: the user, a careful
    helper, and a labeler who misread the instructions and ranks backwards.
    """
    if count < 1:
        raise ValueError("the demo needs at least one user")
    users = []
    for i in range(count):
        name, pref_name = CAST[i % len(CAST)]
        user_id = f"{prefix}{name}{i // len(CAST) + 1 if i >= len(CAST) else ''}"
        pref = PREFERENCES[pref_name]
        labelers = (Labeler(user_id, pref, noise),)
        if i == count - 1 and count > 1:
            labelers += (Labeler(f"{user_id}-helper", pref, noise),
                         Labeler(f"{user_id}-misreader", pref, noise, confused=True))
        users.append(SimUser(user_id, pref, labelers))
    return users
