"""Publishing: a new adapter version in the store (atomic rename, manifest, fenced on
the parent version), then its announcement on ``adapter-updates``, which every server
replica follows to hot-swap it."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

from services.contract.records import AdapterUpdateRecord
from services.contract.store import AdapterStore, StaleParent

Announce = Callable[[AdapterUpdateRecord], None]
"""Sends a record to the adapter-updates topic and returns once the broker has it."""


class Publisher:
    def __init__(self, store: AdapterStore, announce: Announce, model_id: str) -> None:
        self._store = store
        self._announce = announce
        self.model_id = model_id

    def publish(self, user_id: str, adapter_dir: Path, *, parent_version: str, steps: int,
                feedback_count: int, reward_before: float, reward_after: float, kl: float,
                metrics: Mapping[str, float], known_erasure: float = 0.0) -> str:
        """Store the adapter in ``adapter_dir`` as the successor of ``parent_version``
        (the version it was trained from), announce it, and return the version.

        Raises the store's StaleParent, storing and announcing nothing, when
        ``parent_version`` is no longer the user's latest version, or when an operator
        pinned or reset the user (the store's control state); and its Erased when the
        user was erased after ``known_erasure`` (the latest erasure the training data
        postdates).
        """
        self._check_not_held(user_id, parent_version)
        manifest = self._store.publish(
            user_id, adapter_dir, self.model_id, parent_version, known_erasure,
            steps=steps, feedback_count=feedback_count,
            reward_before=reward_before, reward_after=reward_after, kl=kl,
            metrics=dict(metrics))
        self._announce(AdapterUpdateRecord(
            user_id=user_id, version=manifest.version, sha256=manifest.sha256,
            base_model=manifest.base_model, created_at=time.time(),
            metrics={"reward_before": reward_before, "reward_after": reward_after, "kl": kl}))
        return manifest.version

    def restore(self, user_id: str, version: str, *, replaces: str,
                metrics: Mapping[str, object]) -> str:
        """Publish the weights of the stored ``version`` again, as the successor of
        ``replaces`` (the user's latest version; fenced like any publish): a rollback.
        The new version keeps ``version``'s training figures, adds ``metrics``, and
        its parent comparison arm is ``version``'s own."""
        self._check_not_held(user_id, replaces)
        manifest = self._store.restore(user_id, version, self.model_id, replaces=replaces,
                                       metrics=dict(metrics))
        self._announce(AdapterUpdateRecord(
            user_id=user_id, version=manifest.version, sha256=manifest.sha256,
            base_model=manifest.base_model, created_at=time.time(),
            metrics={"rolled_back_from": replaces, "restores": version}))
        return manifest.version

    def _check_not_held(self, user_id: str, parent_version: str) -> None:
        """StaleParent when an operator holds the user (pinned or reset): the trainer
        leaves the served version alone until it is unpinned."""
        control = self._store.read_control(user_id)
        if control.held:
            raise StaleParent(user_id, parent_version,
                              "reset to the base model" if control.reset
                              else f"{control.pinned} (pinned)")
