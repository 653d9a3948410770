"""The bounded sample of everyone's examples that the shared reward head trains on (pure).

The shared head learns from all users, but keeping every user's examples would make
the learner's memory, and the cost of each ``train_shared`` call, grow with the
number of users. ``SharedSample`` keeps a deterministic bottom-k sample instead:

1. per user, the ``per_user`` examples with the smallest stable hash of
   (seed, user, content) — a uniform sample of that user's history, the same in
   every process and stable as the history grows;
2. over all users, the ``max_total`` entries with the smallest hashes, so the
   population is sampled evenly instead of favouring whoever trained last.

A user's ``put`` replaces that user's previous entries (the learner passes the
user's whole current data set each turn). Memory is O(max_total) whatever the
number of users; a user whose entries were all trimmed costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from trainer.reward.data import Example, PairExample, ThumbExample, stable_hash

__all__ = ["SharedSample"]


def _key(example: Example) -> tuple[str, ...]:
    """The fields that identify an example (its weight excluded)."""
    if isinstance(example, PairExample):
        return ("pair", example.prompt, example.chosen, example.rejected)
    return ("thumb", example.prompt, example.completion, repr(float(example.label)))


class SharedSample:
    """At most ``per_user`` examples of each user and ``max_total`` in all."""

    def __init__(self, max_total: int, per_user: int, seed: int = 0) -> None:
        if max_total < 1 or per_user < 1:
            raise ValueError(f"max_total and per_user must be >= 1, got {max_total}, {per_user}")
        self.max_total = max_total
        self.per_user = per_user
        self.seed = seed
        self._by_user: dict[str, list[tuple[int, Example]]] = {}  # sorted by hash
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def users(self) -> list[str]:
        """Users with at least one example in the sample."""
        return list(self._by_user)

    def put(self, user_id: str, pairs: Sequence[PairExample],
            thumbs: Sequence[ThumbExample] = ()) -> None:
        """Replace ``user_id``'s entries with a sample of its current examples."""
        # 1. the user's bottom-k by stable hash
        keyed = sorted(((stable_hash(str(self.seed), user_id, *_key(e)), e)
                        for e in [*pairs, *thumbs]), key=lambda item: item[0])
        keyed = keyed[:self.per_user]
        self.remove(user_id)
        if keyed:
            self._by_user[user_id] = keyed
            self._size += len(keyed)
        # 2. the population's bottom-k
        if self._size > self.max_total:
            self._trim()

    def remove(self, user_id: str) -> None:
        """Drop the user's examples (an erased user)."""
        self._size -= len(self._by_user.pop(user_id, []))

    def examples(self) -> tuple[list[PairExample], list[ThumbExample]]:
        """(pairs, thumbs) of the sample, users in insertion order."""
        items = [e for entries in self._by_user.values() for _, e in entries]
        return ([e for e in items if isinstance(e, PairExample)],
                [e for e in items if isinstance(e, ThumbExample)])

    def _trim(self) -> None:
        ranked = sorted((h, user, i) for user, entries in self._by_user.items()
                        for i, (h, _) in enumerate(entries))
        keep: dict[str, set[int]] = {}
        for _, user, i in ranked[:self.max_total]:
            keep.setdefault(user, set()).add(i)
        self._by_user = {user: [entry for i, entry in enumerate(entries) if i in keep[user]]
                         for user, entries in self._by_user.items() if user in keep}
        self._size = sum(len(entries) for entries in self._by_user.values())
