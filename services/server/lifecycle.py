"""Lifecycle operations of a user's adapters, for operators (the core behind the admin
RPCs; plain dataclasses in and out).

The state lives in the adapter store, so it is durable and shared by every replica and
the trainer: versions are directories, a rollback publishes an earlier version's weights
again as a new version (fenced on the latest, like the trainer's automatic rollback), and
a pin or a reset is the user's ``control.json`` (services/contract/store.py). Each
operation then announces a control record on ``adapter-updates`` so every replica
serves what the store says within the hot-swap bound, and applies it here at once.

Every operation is idempotent: repeating one finds it done and changes nothing.

Erase is the one operation the trainers must also carry out: its tombstone goes on the
``feedback`` topic, keyed by the user and so ordered after every feedback record of the
user, and each trainer drops the user's data and parameters when it reads it, also
when it rebuilds its journal from the topics (trainer/ingest/journal.py).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from services.contract.auth import Caller
from services.contract.errors import FailedPrecondition, NotFound, Unavailable
from services.contract.ids import validate_user_id, validate_version
from services.contract.records import AdapterUpdateRecord, ErasureRecord
from services.contract.status import OnlineWinRate
from services.contract.store import AdapterManifest, AdapterStore, StaleParent, UserControl
from services.server.hot_swap import AdapterManager
from services.server.kafka_io import Ack

Announce = Callable[[AdapterUpdateRecord], Awaitable[object]]
"""Sends a record to ``adapter-updates``; returns once the broker acknowledged it."""
WriteTombstone = Callable[[ErasureRecord], Awaitable[Ack]]
"""Sends an erasure to ``feedback`` (keyed by its user); returns the broker's ack."""


@dataclass(frozen=True)
class VersionView:
    """One stored version with its manifest's figures."""

    version: str
    parent_version: str
    created_at: float
    steps: int
    feedback_count: int
    reward_before: float
    reward_after: float
    judge_before: float
    judge_after: float
    kl: float
    online_vs_base: OnlineWinRate
    online_vs_parent: OnlineWinRate
    pinned: bool
    rolled_back: bool
    """A later version replaced it by a rollback."""
    restores: str = ""
    rollback_reason: str = ""


@dataclass(frozen=True)
class VersionsView:
    user_id: str
    versions: tuple[VersionView, ...]
    served_version: str
    """What the replicas serve per the store ("" : the base model)."""
    control: UserControl = field(default_factory=UserControl)


@dataclass(frozen=True)
class LifecycleOutcome:
    user_id: str
    served_version: str
    control: UserControl
    changed: bool
    """False when the operation was already done (an idempotent repeat)."""
    detail: str


@dataclass(frozen=True)
class EraseOutcome:
    """What an erasure deleted here, and where its tombstone is."""

    user_id: str
    erased_at: float
    deleted_versions: tuple[str, ...]
    deleted_status: bool
    lifted_hold: bool
    """A pin or reset was lifted with the rest."""
    tombstone_partition: int
    tombstone_offset: int
    changed: bool
    """False when the store held nothing of the user (e.g. a repeat)."""
    detail: str


def requested_by(caller: Caller) -> str:
    """How an erasure was authorised, for its tombstone."""
    if not caller.subject:
        return "open"
    return "admin" if caller.admin else "self"


def _win_rate(raw: object) -> OnlineWinRate:
    return OnlineWinRate(**raw) if isinstance(raw, dict) else OnlineWinRate()


def version_view(m: AdapterManifest, control: UserControl, rolled_back: bool) -> VersionView:
    return VersionView(
        version=m.version, parent_version=m.parent_version, created_at=m.created_at,
        steps=m.steps, feedback_count=m.feedback_count, reward_before=m.reward_before,
        reward_after=m.reward_after, judge_before=float(m.metrics.get("judge_before", 0.0)),
        judge_after=float(m.metrics.get("judge_after", 0.0)), kl=m.kl,
        online_vs_base=_win_rate(m.metrics.get("online_vs_base")),
        online_vs_parent=_win_rate(m.metrics.get("online_vs_parent")),
        pinned=control.pinned == m.version, rolled_back=rolled_back,
        restores=str(m.metrics.get("restores", "")),
        rollback_reason=str(m.metrics.get("rollback_reason", "")))


class LifecycleService:
    def __init__(self, store: AdapterStore, adapters: AdapterManager, announce: Announce,
                 model_id: str, write_tombstone: WriteTombstone | None = None) -> None:
        self._store = store
        self._adapters = adapters
        self._announce = announce
        self._model_id = model_id
        self._write_tombstone = write_tombstone

    # --- reads -------------------------------------------------------------------------
    def versions(self, user_id: str) -> VersionsView:
        validate_user_id(user_id)
        control = self._store.read_control(user_id)
        manifests = [self._store.manifest(user_id, v) for v in self._store.versions(user_id)]
        replaced = {str(m.metrics.get("rolled_back_from", "")) for m in manifests}
        views = tuple(version_view(m, control, m.version in replaced) for m in manifests)
        return VersionsView(user_id, views, self._served(user_id, control), control)

    def _served(self, user_id: str, control: UserControl) -> str:
        return "" if control.reset else self._store.latest(user_id) or ""

    def _known(self, user_id: str, version: str) -> list[str]:
        validate_user_id(user_id)
        validate_version(version)
        versions = self._store.versions(user_id)
        if version not in versions:
            raise NotFound(f"user {user_id!r} has no version {version!r} "
                           f"(versions: {', '.join(versions) or 'none'})")
        return versions

    # --- operations --------------------------------------------------------------------
    async def rollback(self, user_id: str, version: str) -> LifecycleOutcome:
        """Serve ``version``'s weights again as a new version; training goes on from it."""
        latest = (await asyncio.to_thread(self._known, user_id, version))[-1]
        control = self._store.read_control(user_id)
        if control.held:
            raise FailedPrecondition(
                f"user {user_id!r} is {'reset' if control.reset else 'pinned to ' + control.pinned}"
                "; unpin before a rollback (or pin the version wanted)")
        if self._serves_weights_of(user_id, latest, version):
            return await self._done(user_id, False, f"{latest} already serves {version}'s weights")
        new = await self._restore(user_id, version, latest, "rolled back by an operator")
        return await self._done(user_id, True, f"rolled back {latest} -> {new} (the weights "
                                               f"of {version})")

    async def pin(self, user_id: str, version: str) -> LifecycleOutcome:
        """Pin the user to ``version`` (an earlier one is first restored as a new version):
        the trainer neither publishes to nor rolls back a pinned user."""
        latest = (await asyncio.to_thread(self._known, user_id, version))[-1]
        control = self._store.read_control(user_id)
        if (control.pinned == latest and not control.reset
                and self._serves_weights_of(user_id, latest, version)):
            return await self._done(user_id, False, f"already pinned to {latest}")
        # hold the trainer first, so nothing is published between the restore and the pin
        self._write(user_id, UserControl(pinned=latest, updated_at=time.time()))
        target = latest
        if not self._serves_weights_of(user_id, latest, version):
            target = await self._restore(user_id, version, latest, "pinned by an operator")
            self._write(user_id, UserControl(pinned=target, updated_at=time.time()))
        what = version if target == version else f"{target} (the weights of {version})"
        return await self._done(user_id, True, f"pinned to {what}")

    async def unpin(self, user_id: str) -> LifecycleOutcome:
        """Lift a pin or a reset: the newest version is served, training goes on."""
        validate_user_id(user_id)
        if not self._store.read_control(user_id).held:
            return await self._done(user_id, False, "not pinned")
        self._write(user_id, UserControl(updated_at=time.time()))
        return await self._done(user_id, True, "unpinned")

    async def reset(self, user_id: str) -> LifecycleOutcome:
        """Serve the base model; the user's data and versions are kept (until unpinned)."""
        validate_user_id(user_id)
        if self._store.read_control(user_id).reset:
            return await self._done(user_id, False, "already reset")
        self._write(user_id, UserControl(reset=True, updated_at=time.time()))
        return await self._done(user_id, True, "reset to the base model")

    async def erase(self, user_id: str, requested_by: str) -> EraseOutcome:
        """Erase the user: the tombstone first (durable on the broker: the trainers drop
        the user's journal rows, reward-model heads, policy state and status when they
        read it, also on a rebuild from the topics), then the store's versions, status
        and hold, then every replica is told to serve the base model. Repeating it is
        harmless (a second tombstone; nothing left to delete here)."""
        validate_user_id(user_id)
        if self._write_tombstone is None:
            raise FailedPrecondition("erasure needs the feedback topic; not enabled here")
        erased_at = time.time()
        ack = await self._write_tombstone(ErasureRecord(
            erasure_id=uuid.uuid4().hex, user_id=user_id, erased_at=erased_at,
            requested_by=requested_by))
        files = await asyncio.to_thread(self._store.erase, user_id, erased_at)
        changed = bool(files.versions or files.status or files.control)
        parts = [f"versions {', '.join(files.versions)}" if files.versions else "no versions",
                 "the status" if files.status else "no status"]
        if files.control:
            parts.append("the pin or reset")
        done = await self._done(user_id, changed, "deleted " + ", ".join(parts) + (
            f"; tombstone at feedback partition {ack.partition} offset {ack.offset}: each "
            "trainer drops the user's data and parameters when it reads it"))
        return EraseOutcome(user_id, erased_at, files.versions, files.status, files.control,
                            ack.partition, ack.offset, changed, done.detail)

    # --- helpers -----------------------------------------------------------------------
    def _serves_weights_of(self, user_id: str, latest: str, version: str) -> bool:
        """``latest`` is ``version`` or a restore of its weights."""
        return latest == version or self._store.manifest(
            user_id, latest).metrics.get("restores") == version

    def _write(self, user_id: str, control: UserControl) -> None:
        self._store.write_control(user_id, control)

    async def _restore(self, user_id: str, version: str, latest: str, reason: str) -> str:
        try:
            manifest = await asyncio.to_thread(
                self._store.restore, user_id, version, self._model_id, replaces=latest,
                metrics={"rolled_back_from": latest, "restores": version,
                         "rollback_reason": reason})
        except StaleParent as exc:
            raise Unavailable(f"a new version was published meanwhile ({exc}); retry") from exc
        return manifest.version

    async def _done(self, user_id: str, changed: bool, detail: str) -> LifecycleOutcome:
        """Announce the user's state to every replica (also on a repeat: a replica that
        missed it catches up), apply it here, and answer."""
        control = self._store.read_control(user_id)
        served = self._served(user_id, control)
        await self._announce(AdapterUpdateRecord(
            user_id=user_id, version=served, sha256="", base_model=self._model_id,
            created_at=time.time(), control=True))
        await self._adapters.apply_control(user_id)
        return LifecycleOutcome(user_id, served, control, changed, detail)
