"""Hot-swap of per-user adapters: verify, load into the engine, route, retire.

Fed by the store scan at start, the ``adapter-updates`` topic while running,
and a periodic rescan that backs the topic up. A version that fails
verification or loading is refused and the user keeps the last good one.
An erased user (the store's tombstone, ``UserControl.erased_at``) is forgotten:
adapters unloaded, per-user counters dropped (``on_erased`` listeners), and the
feedback of answers served before the erasure is refused (``erased_at``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from services.contract.errors import DomainError
from services.contract.ids import validate_user_id, validate_version
from services.contract.records import AdapterUpdateRecord, RecordError
from services.contract.store import AdapterManifest, AdapterRejected, AdapterStore
from services.server.engine import Engine
from services.server.metrics import ServerMetrics
from services.server.routing import AdapterRegistry, AdapterSlot

log = logging.getLogger(__name__)


class AdapterManager:
    def __init__(self, engine: Engine, store: AdapterStore, metrics: ServerMetrics,
                 max_rank: int, allowed_targets: frozenset[str] | None = None) -> None:
        self._engine = engine
        self._store = store
        self._metrics = metrics
        self._max_rank = max_rank
        self._allowed_targets = allowed_targets
        self._registry = AdapterRegistry()
        self._refused: set[tuple[str, str]] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._erased: dict[str, float] = {}
        self._erase_listeners: list[Callable[[str], None]] = []

    def on_erased(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(user_id)`` when this replica learns that a user was erased."""
        self._erase_listeners.append(listener)

    def erased_at(self, user_id: str) -> float:
        """Unix seconds of the user's latest erasure this replica knows of (0.0: none)."""
        return self._erased.get(user_id, 0.0)

    def version_of(self, user_id: str) -> str:
        return self._registry.version_of(user_id)

    @asynccontextmanager
    async def use(self, user_id: str) -> AsyncIterator[AdapterSlot | None]:
        """The user's current adapter (None: base model), held for one request."""
        async with self.use_with_parent(user_id) as (slot, _):
            yield slot

    @asynccontextmanager
    async def use_with_parent(self, user_id: str
                              ) -> AsyncIterator[tuple[AdapterSlot | None, AdapterSlot | None]]:
        """The user's current adapter and its parent comparison arm (None: base model,
        no parent arm), both held for one request."""
        slot = self._registry.acquire(user_id)
        parent = self._registry.parent_of(user_id) if slot is not None else None
        held = [s for s in (slot, parent and self._registry.hold(parent)) if s is not None]
        try:
            yield slot, parent
        finally:
            for s in held:
                done = self._registry.release(s)
                if done is not None:
                    await self._unload(done)

    async def install(self, user_id: str, version: str) -> bool:
        """Make ``version`` the user's adapter if it is newer and verifies."""
        validate_user_id(user_id)
        validate_version(version)
        lock = self._locks.setdefault(user_id, asyncio.Lock())
        async with lock:
            if not self._registry.is_newer(user_id, version) or (user_id, version) in self._refused:
                return False
            if (await asyncio.to_thread(self._store.read_control, user_id)).reset:
                return False  # an operator reset the user: the base model serves them
            start = time.perf_counter()
            slot = self._registry.new_slot(
                user_id, version, str(self._store.version_dir(user_id, version)))
            try:
                manifest = await asyncio.to_thread(self._verify, user_id, version)
                await self._engine.load_adapter(slot)
            except AdapterRejected as exc:
                return self._refuse(user_id, version, exc.reason, str(exc))
            except Exception as exc:  # noqa: BLE001 - engine refused the weights
                return self._refuse(user_id, version, "load_failed", repr(exc))
            parent = await self._parent_slot(user_id, manifest.parent_arm)
            old = self._registry.install(slot, parent)
            for done in ([old] if old is not None else []) + self._registry.drain_removable():
                await self._unload(done)
            self._metrics.adapter_loads.labels("ok").inc()
            self._metrics.adapter_swap_seconds.observe(time.perf_counter() - start)
            self._metrics.active_adapters.set(self._registry.active)
            log.info("serving %s with adapter %s", user_id, version)
            return True

    async def apply_control(self, user_id: str) -> None:
        """Serve what the user's control state says: the base model after a reset,
        otherwise the newest good version (e.g. after an unpin)."""
        validate_user_id(user_id)
        control = await asyncio.to_thread(self._store.read_control, user_id)
        if control.erased_at > self.erased_at(user_id):
            await self._forget(user_id, control.erased_at)
        if control.reset:
            async with self._locks.setdefault(user_id, asyncio.Lock()):
                await self._route_to_base(user_id)
            log.info("serving %s with the base model (reset)", user_id)
            return
        for version in reversed(await asyncio.to_thread(self._store.versions, user_id)):
            if not self._registry.is_newer(user_id, version) or await self.install(user_id,
                                                                                     version):
                return

    async def _forget(self, user_id: str, erased_at: float) -> None:
        """The user was erased: unload its adapters and drop what this replica keeps."""
        async with self._locks.setdefault(user_id, asyncio.Lock()):
            await self._route_to_base(user_id)
            self._refused = {(u, v) for u, v in self._refused if u != user_id}
            self._erased[user_id] = erased_at
        for listener in self._erase_listeners:
            listener(user_id)
        self._metrics.active_adapters.set(self._registry.active)
        log.info("user %s was erased: serving the base model, per-user state dropped",
                 user_id)

    async def _route_to_base(self, user_id: str) -> None:
        """Serve the user the base model; unload the slots no request holds (the user's
        lock held)."""
        for done in self._registry.remove(user_id):
            await self._unload(done)

    def _verify(self, user_id: str, version: str) -> AdapterManifest:
        return self._store.verify(user_id, version, self._engine.model_id, self._max_rank,
                                  self._allowed_targets)

    async def _parent_slot(self, user_id: str, version: str) -> AdapterSlot | None:
        """A slot for the parent comparison arm of a version being installed: the slot
        already serving or comparing that version, or a new one once the stored parent
        verifies (the engine loads it on first use). None: no parent arm."""
        if not version or (user_id, version) in self._refused:
            return None
        for known in (self._registry.current.get(user_id), self._registry.parent_of(user_id)):
            if known is not None and known.version == version:
                return known
        slot = self._registry.new_slot(user_id, version,
                                       str(self._store.version_dir(user_id, version)))
        try:
            await asyncio.to_thread(self._verify, user_id, version)
        except Exception as exc:  # noqa: BLE001 - no parent arm; the user is still served
            log.warning("parent %s/%s is not a comparison arm: %s", user_id, version, exc)
            return None
        return slot

    def _refuse(self, user_id: str, version: str, reason: str, detail: str) -> bool:
        self._refused.add((user_id, version))
        self._metrics.adapter_loads.labels("refused").inc()
        self._metrics.adapter_refusals.labels(reason).inc()
        log.warning("refused adapter %s/%s (%s); keeping %s", user_id, version, detail,
                    self._registry.version_of(user_id) or "the base model")
        return False

    async def _unload(self, slot: AdapterSlot) -> None:
        try:
            await self._engine.unload_adapter(slot)
        except Exception:
            log.debug("unload of %s failed", slot.lora_name, exc_info=True)
        self._metrics.active_adapters.set(self._registry.active)

    async def on_update(self, raw: bytes) -> None:
        """Handle one ``adapter-updates`` record."""
        try:
            update = AdapterUpdateRecord.from_json(raw)
            if update.control:
                await self.apply_control(update.user_id)
            else:
                await self.install(update.user_id, update.version)
        except (RecordError, DomainError) as exc:
            log.warning("ignored adapter update: %s", exc)

    async def scan(self) -> int:
        """Install the newest good version of every user in the store, after applying
        any erasure this replica missed (an erased user's directory holds its
        tombstone)."""
        installed = 0
        users = await asyncio.to_thread(self._store.users)
        for user_id in users:
            erased_at = await asyncio.to_thread(self._store.erased_at, user_id)
            if erased_at > self.erased_at(user_id):
                await self._forget(user_id, erased_at)
            for version in reversed(await asyncio.to_thread(self._store.versions, user_id)):
                if not self._registry.is_newer(user_id, version):
                    break
                if await self.install(user_id, version):
                    installed += 1
                    break
        return installed
