"""Per-user adapter routing with reference counts: the pure part of hot-swap.

Each adapter *version* gets its own engine name (``user@version``) and integer
id, so the engine's prefix cache never mixes weights. A swap makes the new
version current at once; requests already running hold the old one, which is
retired and removed from the engine only when its last request releases it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from services.contract.ids import version_number

_LORA_IDS = itertools.count(1)
"""Engine ids unique in the process: registries that share one engine (replicas
in one process, a restarted server) never reuse an id, which would make the
engine serve the adapter already cached under it."""


@dataclass
class AdapterSlot:
    """One loaded adapter version and the requests using it."""

    user_id: str
    version: str
    path: str
    lora_int_id: int
    in_flight: int = 0
    retired: bool = False

    @property
    def lora_name(self) -> str:
        return f"{self.user_id}@{self.version}"


@dataclass
class AdapterRegistry:
    """Which version serves each user, and which old versions can be dropped."""

    current: dict[str, AdapterSlot] = field(default_factory=dict)
    retiring: dict[int, AdapterSlot] = field(default_factory=dict)
    parents: dict[str, AdapterSlot] = field(default_factory=dict)
    """The parent arm of each user's current version, when it is loadable."""
    _removable: list[AdapterSlot] = field(default_factory=list)
    _ids: itertools.count = field(default_factory=lambda: _LORA_IDS)

    def is_newer(self, user_id: str, version: str) -> bool:
        slot = self.current.get(user_id)
        return slot is None or version_number(version) > version_number(slot.version)

    def new_slot(self, user_id: str, version: str, path: str) -> AdapterSlot:
        """A slot with a fresh engine id; not routed to until installed."""
        return AdapterSlot(user_id, version, path, next(self._ids))

    def install(self, slot: AdapterSlot, parent: AdapterSlot | None = None
                ) -> AdapterSlot | None:
        """Route the user's next requests to ``slot``; ``parent`` (already a slot of
        this registry, or a new one) is its comparison arm (None: no parent arm).

        Returns the previous slot if it can be removed from the engine now
        (no request uses it and it is not the new parent); otherwise it is kept
        until released. An old parent slot no longer needed is retired the same way;
        call :meth:`drain_removable` for those.
        """
        user = slot.user_id
        old, old_parent = self.current.get(user), self.parents.get(user)
        self.current[user] = slot
        if parent is None:
            self.parents.pop(user, None)
        else:
            self.parents[user] = parent
        keep = {slot.lora_int_id} | ({parent.lora_int_id} if parent else set())
        removable = None
        for previous in (old, old_parent):
            if previous is None or previous.lora_int_id in keep or previous.retired:
                continue
            previous.retired = True
            if previous.in_flight == 0:
                if previous is old:
                    removable = previous
                else:
                    self._removable.append(previous)
            else:
                self.retiring[previous.lora_int_id] = previous
        return removable

    def remove(self, user_id: str) -> list[AdapterSlot]:
        """Route the user to the base model: their slots are retired; those no request
        holds are returned, to be removed from the engine now."""
        out = []
        for slot in (self.current.pop(user_id, None), self.parents.pop(user_id, None)):
            if slot is None or slot.retired:
                continue
            slot.retired = True
            if slot.in_flight == 0:
                out.append(slot)
            else:
                self.retiring[slot.lora_int_id] = slot
        return out

    def drain_removable(self) -> list[AdapterSlot]:
        """Retired parent slots no request holds, to be removed from the engine now."""
        out, self._removable = self._removable, []
        return out

    def parent_of(self, user_id: str) -> AdapterSlot | None:
        """The comparison arm slot of the user's current version (None: none)."""
        return self.parents.get(user_id)

    def hold(self, slot: AdapterSlot) -> AdapterSlot:
        """Count one more request on ``slot`` (e.g. a parent arm); release it after."""
        slot.in_flight += 1
        return slot

    def acquire(self, user_id: str) -> AdapterSlot | None:
        """The user's current slot, counted as in use (None: the base model)."""
        slot = self.current.get(user_id)
        if slot is not None:
            slot.in_flight += 1
        return slot

    def release(self, slot: AdapterSlot) -> AdapterSlot | None:
        """Stop counting one request; returns the slot if it should now be removed."""
        slot.in_flight -= 1
        if slot.retired and slot.in_flight == 0:
            self.retiring.pop(slot.lora_int_id, None)
            return slot
        return None

    def version_of(self, user_id: str) -> str:
        slot = self.current.get(user_id)
        return slot.version if slot else ""

    @property
    def active(self) -> int:
        return len(self.current) + len(self.retiring)


@dataclass
class LoraCacheModel:
    """The server's model of vLLM's LRU cache of loaded adapters (pure).

    vLLM keeps up to ``max_cpu_loras`` adapters loaded; a request whose adapter
    is not among them makes the engine read it from the store again, evicting
    the least recently used one. The model follows the same rules from what the
    server does: ``load`` (add_lora), ``remove`` (remove_lora), and each request
    between ``acquire`` and ``release``. A request in flight keeps its adapter
    in use (vLLM touches it every step), so the model evicts the least recently
    used adapter that no request holds. It matches the engine while requests do
    not race for the last free place (checked against vLLM's list_loras in
    tests/services/test_hot_swap.py).
    """

    capacity: int
    _lru: dict[int, int] = field(default_factory=dict)
    """Adapter id -> requests holding it, least recently used first."""

    def load(self, lora_int_id: int) -> None:
        """An adapter was loaded (or touched) outside of a request."""
        self._touch(lora_int_id, self._lru.pop(lora_int_id, 0))

    def remove(self, lora_int_id: int) -> None:
        self._lru.pop(lora_int_id, None)

    def acquire(self, lora_int_id: int) -> bool:
        """One request starts on the adapter; True if it was loaded (a hit)."""
        hit = lora_int_id in self._lru
        self._touch(lora_int_id, self._lru.pop(lora_int_id, 0) + 1)
        return hit

    def release(self, lora_int_id: int) -> None:
        """One request on the adapter ended (its last use, so it is touched)."""
        if lora_int_id in self._lru:
            self._touch(lora_int_id, max(0, self._lru.pop(lora_int_id) - 1))

    @property
    def resident(self) -> set[int]:
        return set(self._lru)

    def _touch(self, lora_int_id: int, holders: int) -> None:
        while self._lru and len(self._lru) >= self.capacity:
            idle = [i for i, n in self._lru.items() if n == 0]
            del self._lru[idle[0] if idle else next(iter(self._lru))]
        self._lru[lora_int_id] = holders
