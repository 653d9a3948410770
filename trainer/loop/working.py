"""Working copies: a user's unpublished training progress, kept across eviction.

Training goes on from a candidate the gate refused, so a resident user's weights are
often ahead of its served version. The policy pool holds ``PPOConfig.max_resident_users``
adapters; when it evicts a user whose weights differ from the served ones, the trainer
writes them here (PEFT folder plus value head, and the store version they descend
from). The next load of the user resumes from this copy while that version is still
the user's latest; a copy descending from an older version (another trainer published,
a rollback) is stale and dropped. Without it, a trainer with more users than resident
adapters would restart every such user from its served version on each turn, so no
user could progress beyond one turn's iterations until a candidate passed the gate.

The gate's baseline of a resumed user is its served version, read from the store
(:func:`served_weights`), not the resumed weights.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from trainer.loop.gate import Snapshot
from trainer.ppo.policies import ADAPTER_WEIGHTS, PolicyPool

log = logging.getLogger(__name__)

PARENT_FILE = "parent"
"""The store version (empty: none) a working copy's weights descend from."""

class WorkingCopies:
    """One directory per user under ``root``; each write replaces the user's copy whole."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, user_id: str) -> Path:
        return self.root / user_id

    def save(self, pool: PolicyPool, user_id: str, parent: str) -> Path:
        """Write the resident ``user_id``'s adapter and value head, descending from
        ``parent``, replacing any earlier copy (written aside, then renamed)."""
        self.root.mkdir(parents=True, exist_ok=True)
        final, tmp = self._dir(user_id), self.root / f".{user_id}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        pool.export_adapter(user_id, tmp)
        (tmp / PARENT_FILE).write_text(parent)
        self.discard(user_id)
        tmp.rename(final)
        log.info("user %s: kept unpublished weights (descending from %s) at %s", user_id,
                 parent or "no version", final)
        return final

    def source(self, user_id: str, latest: str) -> Path | None:
        """The user's copy when it descends from ``latest`` (the user's latest store
        version, empty when none); a stale copy is dropped."""
        found = self._dir(user_id)
        try:
            parent = (found / PARENT_FILE).read_text()
        except OSError:
            return None
        if parent != latest:
            log.info("user %s: dropped unpublished weights descending from %s (latest is %s)",
                     user_id, parent or "no version", latest or "none")
            self.discard(user_id)
            return None
        return found

    def discard(self, user_id: str) -> None:
        shutil.rmtree(self._dir(user_id), ignore_errors=True)


def differs(pool: PolicyPool, user_id: str, weights: Snapshot) -> bool:
    """Whether the resident user's LoRA weights differ from ``weights``."""
    return any(not torch.equal(p, weights[name])
               for name, p in pool.adapter_parameters(user_id).items())


def served_weights(pool: PolicyPool, user_id: str, version_dir: Path | None) -> Snapshot:
    """The LoRA weights of the user's served version, by the resident adapter's parameter
    names: read from ``version_dir``; with no version, the base model's (every ``lora_B``
    zero, as PEFT initialises it, and ``lora_A`` as resident so that training can start
    from it)."""
    resident = pool.adapter_parameters(user_id)
    marker = f".{pool.user(user_id).adapter_name}."
    if version_dir is None:
        return {name: torch.zeros_like(p) if ".lora_B." in name else p.detach().clone()
                for name, p in resident.items()}
    saved = load_file(str(version_dir / ADAPTER_WEIGHTS), device=str(pool.device))
    return {name: saved[name.replace(marker, ".")].to(p.dtype) for name, p in resident.items()}
