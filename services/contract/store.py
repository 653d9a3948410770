"""The adapter store: ``<root>/<user_id>/<version>/`` in PEFT format plus a manifest.

Versions are written to a temporary directory and renamed into place, so a
reader sees a whole version or none. Servers verify a version before serving
it. Shared by the server (reads) and the trainer (publishes).

Publishing is fenced: a publish names the version its candidate was trained
from and becomes that version's successor (``v<n+1>``) or nothing. It is
refused with :class:`StaleParent` when another version is already the latest,
and two publishers racing from the same parent race for one directory name,
which rename(2) gives to exactly one of them (renaming a directory onto an
existing non-empty one fails). See docs/operations.md#the-adapter-store.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.contract.errors import InvalidArgument
from services.contract.ids import validate_user_id, validate_version, version_number
from services.contract.status import StatusError, TrainerReport

log = logging.getLogger(__name__)

WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
MANIFEST_FILE = "manifest.json"
STATUS_FILE = "status.json"
CONTROL_FILE = "control.json"


class AdapterRejected(Exception):
    """A stored adapter that must not be served, with the reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class StaleParent(Exception):
    """A publish refused because the candidate's parent is no longer the latest version
    (another trainer published in between: the candidate would discard its progress)."""

    def __init__(self, user_id: str, parent_version: str, latest: str) -> None:
        super().__init__(f"user {user_id}: trained from {parent_version or 'no adapter'}, "
                         f"but the latest version is {latest or 'none'}")
        self.user_id = user_id
        self.parent_version = parent_version
        self.latest = latest


class Erased(StaleParent):
    """A publish (or status) refused because the user's data was erased after the data
    the candidate was trained on: it must not bring anything of the user back."""

    def __init__(self, user_id: str, known: float, erased_at: float) -> None:
        Exception.__init__(self, f"user {user_id}: erased at {erased_at:.3f}, after the data "
                                 f"this was trained on (erasure known: {known:.3f})")
        self.user_id = user_id
        self.parent_version = ""
        self.latest = ""


@dataclass(frozen=True)
class ErasedFiles:
    """What :meth:`AdapterStore.erase` deleted."""

    versions: tuple[str, ...]
    status: bool
    control: bool
    """A pin or reset was lifted."""


@dataclass(frozen=True)
class AdapterManifest:
    """What the trainer records next to each adapter version."""

    user_id: str
    version: str
    base_model: str
    sha256: str
    parent_version: str = ""
    created_at: float = 0.0
    steps: int = 0
    feedback_count: int = 0
    reward_before: float = 0.0
    reward_after: float = 0.0
    kl: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    comparison_parent: str | None = None
    """The version the ``parent`` arm of interleaved comparisons serves beside this one;
    None: ``parent_version``. A rollback, whose parent is the version it replaces,
    names the parent of the version whose weights it restores ("" for none)."""

    @property
    def parent_arm(self) -> str:
        """The version of the ``parent`` comparison arm ("" : there is none)."""
        return self.parent_version if self.comparison_parent is None else self.comparison_parent


@dataclass(frozen=True)
class UserControl:
    """An operator's hold on a user (``<store>/<user_id>/control.json``): written by the
    lifecycle RPCs, read by every server replica (what to serve) and by the trainer
    (a held user is neither published to nor rolled back automatically)."""

    pinned: str = ""
    """The version the user is pinned to ("" : not pinned); always the latest version."""
    reset: bool = False
    """The user is served the base model (reset); their data and versions are kept."""
    updated_at: float = 0.0
    """Unix seconds of the operation that wrote it."""
    erased_at: float = 0.0
    """Unix seconds of the user's latest erasure (0: never erased). What was trained on
    data up to then is never published or reported (a tombstone, not personal data)."""
    erased_through: int = 0
    """The highest version number the erasure deleted: version numbers go on after it,
    so no replica mistakes a new adapter for an erased one."""

    @property
    def held(self) -> bool:
        """Pinned or reset: the trainer leaves the user's served version alone."""
        return bool(self.pinned) or self.reset


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    """Make a rename or new entry in ``path`` durable (a no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AdapterStore:
    """Reads, verifies and publishes adapter versions under one root directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def user_dir(self, user_id: str) -> Path:
        return self.root / validate_user_id(user_id)

    def version_dir(self, user_id: str, version: str) -> Path:
        return self.user_dir(user_id) / validate_version(version)

    def versions(self, user_id: str) -> list[str]:
        """Complete versions of a user, oldest first."""
        udir = self.user_dir(user_id)
        return [v for v in self._all_versions(udir) if (udir / v / MANIFEST_FILE).is_file()]

    def latest(self, user_id: str) -> str | None:
        versions = self.versions(user_id)
        return versions[-1] if versions else None

    def users(self) -> list[str]:
        out = []
        for child in sorted(self.root.iterdir()):
            try:
                out.append(validate_user_id(child.name))
            except InvalidArgument:
                continue
        return out

    def manifest(self, user_id: str, version: str) -> AdapterManifest:
        path = self.version_dir(user_id, version) / MANIFEST_FILE
        body = json.loads(path.read_text())
        names = {f.name for f in dataclasses.fields(AdapterManifest)}
        return AdapterManifest(**{k: v for k, v in body.items() if k in names})

    def verify(self, user_id: str, version: str, base_model: str, max_rank: int,
               allowed_targets: frozenset[str] | None = None) -> AdapterManifest:
        """Check a version is safe to serve; raise AdapterRejected with the reason."""
        vdir = self.version_dir(user_id, version)
        try:
            manifest = self.manifest(user_id, version)
            config = json.loads((vdir / CONFIG_FILE).read_text())
        except (OSError, ValueError, TypeError) as exc:
            raise AdapterRejected("unreadable", str(exc)) from exc
        if manifest.user_id != user_id or manifest.version != version:
            raise AdapterRejected("mismatch", "manifest names another user or version")
        if manifest.base_model != base_model:
            raise AdapterRejected("wrong_base", f"{manifest.base_model!r} != {base_model!r}")
        if sha256_file(vdir / WEIGHTS_FILE) != manifest.sha256:
            raise AdapterRejected("checksum", "weights do not match the manifest sha256")
        rank = int(config.get("r", 0))
        if not 0 < rank <= max_rank:
            raise AdapterRejected("rank", f"rank {rank} not in [1, {max_rank}]")
        targets = config.get("target_modules") or []
        targets = {targets} if isinstance(targets, str) else set(targets)
        if allowed_targets is not None and not targets <= allowed_targets:
            raise AdapterRejected("targets", f"unsupported target modules {sorted(targets)}")
        _check_weights(vdir / WEIGHTS_FILE, None if config.get("rank_pattern") else rank,
                       max_rank, allowed_targets)
        return manifest

    def publish(self, user_id: str, adapter_dir: Path, base_model: str, parent_version: str,
                known_erasure: float | None = None, **manifest_fields: Any) -> AdapterManifest:
        """Copy a PEFT adapter directory in, atomically, as the successor of
        ``parent_version`` (the version it was trained from; "" for none).

        Raises StaleParent, leaving the store unchanged, when ``parent_version`` is
        not the user's latest version, also when a concurrent publisher from the
        same parent renamed its version into place first; and :class:`Erased` when
        the user was erased after ``known_erasure`` (the latest erasure the
        candidate's training data postdates; None: not checked, e.g. a restore of
        stored weights).
        """
        self._check_parent(user_id, parent_version)
        control = self.read_control(user_id)
        self._check_erasure(user_id, known_erasure, control)
        floor = control.erased_through
        version = f"v{max(version_number(parent_version) if parent_version else 0, floor) + 1}"
        udir = self.user_dir(user_id)
        udir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=udir, prefix=".staging-"))
        try:
            for item in adapter_dir.iterdir():
                if item.is_file():
                    shutil.copy2(item, staging / item.name)
            manifest = AdapterManifest(
                user_id=user_id, version=version, base_model=base_model,
                sha256=sha256_file(staging / WEIGHTS_FILE), parent_version=parent_version,
                created_at=time.time(), **manifest_fields,
            )
            _atomic_write(staging / MANIFEST_FILE, json.dumps(dataclasses.asdict(manifest)))
            _fsync_dir(staging)
            self._check_parent(user_id, parent_version)  # copying took a while
            self._check_erasure(user_id, known_erasure)
            try:
                os.rename(staging, udir / version)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                raise StaleParent(user_id, parent_version,
                                  self.latest(user_id) or version) from exc
            _fsync_dir(udir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log.info("published adapter %s/%s (parent %s)", user_id, version,
                 parent_version or "none")
        return manifest

    def _check_parent(self, user_id: str, parent_version: str) -> None:
        latest = self.latest(user_id) or ""
        if latest != parent_version:
            raise StaleParent(user_id, parent_version, latest)

    def _check_erasure(self, user_id: str, known_erasure: float | None,
                       control: UserControl | None = None) -> None:
        """Erased when the user was erased after ``known_erasure`` (None: not checked);
        ``control``: the user's control state if already read."""
        if known_erasure is None:
            return
        erased_at = (control or self.read_control(user_id)).erased_at
        if erased_at > known_erasure:
            raise Erased(user_id, known_erasure, erased_at)

    def update_metrics(self, user_id: str, version: str, metrics: dict[str, Any]) -> None:
        """Merge ``metrics`` into a published version's manifest (atomically; the weights
        and their sha256 are untouched). The trainer keeps a served version's online win
        rates there. A version erased meanwhile is left alone."""
        path = self.version_dir(user_id, version) / MANIFEST_FILE
        try:
            body = json.loads(path.read_text())
        except FileNotFoundError:
            log.info("not updating %s/%s: it is gone (erased)", user_id, version)
            return
        body["metrics"] = {**body.get("metrics", {}), **metrics}
        _atomic_write(path, json.dumps(body))

    def restore(self, user_id: str, version: str, base_model: str, *, replaces: str,
                metrics: dict[str, Any]) -> AdapterManifest:
        """Publish the weights of the stored ``version`` again, as the successor of
        ``replaces`` (fenced like any publish): a rollback. The new version keeps
        ``version``'s training figures (not its online ones), adds ``metrics``, and its
        parent comparison arm is ``version``'s own."""
        source = self.manifest(user_id, version)
        kept = {k: v for k, v in source.metrics.items() if not k.startswith("online_")}
        return self.publish(
            user_id, self.version_dir(user_id, version), base_model, replaces,
            steps=source.steps, feedback_count=source.feedback_count,
            reward_before=source.reward_before, reward_after=source.reward_after,
            kl=source.kl, metrics={**kept, **metrics}, comparison_parent=source.parent_arm)

    def read_control(self, user_id: str) -> UserControl:
        """The operator's hold on the user (none: the default)."""
        try:
            body = json.loads((self.user_dir(user_id) / CONTROL_FILE).read_text())
        except FileNotFoundError:
            return UserControl()
        names = {f.name for f in dataclasses.fields(UserControl)}
        return UserControl(**{k: v for k, v in body.items() if k in names})

    def write_control(self, user_id: str, control: UserControl) -> None:
        """Replace the user's control state atomically and durably."""
        udir = self.user_dir(user_id)
        udir.mkdir(parents=True, exist_ok=True)
        _atomic_write(udir / CONTROL_FILE, json.dumps(dataclasses.asdict(control)))
        _fsync_dir(udir)

    def write_status(self, user_id: str, report: TrainerReport,
                     known_erasure: float | None = None) -> bool:
        """The trainer's per-user report, read by GetUserStatus on any replica. Not
        written (False) when the user was erased after ``known_erasure`` (the latest
        erasure the report's data postdates; None: not checked)."""
        try:
            self._check_erasure(user_id, known_erasure)
        except Erased as exc:
            log.info("status not written: %s", exc)
            return False
        udir = self.user_dir(user_id)
        udir.mkdir(parents=True, exist_ok=True)
        _atomic_write(udir / STATUS_FILE, report.to_json())
        return True

    def erase(self, user_id: str, erased_at: float) -> ErasedFiles:
        """Delete the user's versions, status and hold, keeping a tombstone in
        ``control.json`` (``erased_at``, ``erased_through``) that fences every later
        publish and status trained on older data. Idempotent; an older ``erased_at``
        than the stored one keeps the newer. The tombstone is written first, so a
        crash half-way leaves files that a repeat (by a server or the trainer) deletes.
        """
        udir = self.user_dir(user_id)
        before = self.read_control(user_id)
        versions = self._all_versions(udir)
        through = max([before.erased_through, *(version_number(v) for v in versions)])
        self.write_control(user_id, UserControl(
            updated_at=time.time(), erased_at=max(erased_at, before.erased_at),
            erased_through=through))
        for name in versions:
            shutil.rmtree(udir / name, ignore_errors=True)
        for child in udir.iterdir():  # staging left by a publish that crashed or raced
            if child.name.startswith(".staging-"):
                shutil.rmtree(child, ignore_errors=True)
        status = udir / STATUS_FILE
        had_status = status.exists()
        status.unlink(missing_ok=True)
        _fsync_dir(udir)
        log.info("erased user %s: versions %s%s", user_id, ", ".join(versions) or "none",
                 ", status" if had_status else "")
        return ErasedFiles(tuple(versions), had_status, before.held)

    def erased_at(self, user_id: str) -> float:
        """Unix seconds of the user's latest erasure (0.0: never erased)."""
        return self.read_control(user_id).erased_at

    @staticmethod
    def _all_versions(udir: Path) -> list[str]:
        """Every version directory (complete or not), by number."""
        if not udir.is_dir():
            return []
        found = []
        for child in udir.iterdir():
            try:
                found.append((version_number(child.name), child.name))
            except InvalidArgument:
                continue
        return [name for _, name in sorted(found)]

    def read_status(self, user_id: str) -> TrainerReport | None:
        """The user's latest report; None when there is none or it does not parse."""
        try:
            raw = (self.user_dir(user_id) / STATUS_FILE).read_text()
        except OSError:
            return None
        try:
            return TrainerReport.from_json(raw)
        except StatusError as exc:
            log.warning("status of user %s is refused: %s", user_id, exc)
            return None


def _check_weights(path: Path, rank: int | None, max_rank: int,
                   allowed_targets: frozenset[str] | None) -> None:
    """Every tensor finite; LoRA A/B tensors of the configured rank (at most
    ``max_rank`` with a rank_pattern) on allowed modules only."""
    import torch
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise AdapterRejected("unreadable", f"weights: {exc}") from exc
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise AdapterRejected("non_finite", f"tensor {name} has NaN or Inf values")
        parts = name.split(".")
        kind = next((p for p in parts if p in ("lora_A", "lora_B")), None)
        if kind is None or tensor.dim() != 2:
            continue
        module = parts[parts.index(kind) - 1]
        if allowed_targets is not None and module not in allowed_targets:
            raise AdapterRejected("targets", f"tensor {name} adapts module {module!r}")
        r = tensor.shape[0] if kind == "lora_A" else tensor.shape[1]
        if (rank is not None and r != rank) or not 0 < r <= max_rank:
            raise AdapterRejected("rank", f"tensor {name} has rank {r}; adapter_config "
                                  f"says {rank}, the server takes at most {max_rank}")
