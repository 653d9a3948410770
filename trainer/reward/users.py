"""Per-user reward heads: the tiny residuals each user adds to the shared reward, in an LRU.

A ``UserHead`` holds two residuals of F + 1 floats each (the policy head PPO optimises and
the judge head the publish gate trusts; 21,764 floats for MiniLM's 7 pooled depths, 8,192
lexical buckets and the length input, ~87 KB as a safetensors file), so thousands of
users fit in memory. ``UserHeadPool`` keeps at most ``max_resident`` of them:
``on_evict(user_id)`` runs while the user is still resident (e.g. to ``save``), and
``user_source(user_id)`` names a file written by ``save`` to reload on a miss, as in
``trainer.ppo.policies``. A file that does not fit (saved with other settings) is ignored
with a warning: the head is retrained from the user's data on the next turn.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

__all__ = ["JUDGE", "POLICY", "EvictHook", "UserHead", "UserHeadPool", "UserSource", "check_state",
           "read_safetensors"]

logger = logging.getLogger(__name__)

USER_FORMAT = "personal-reward-user-head/2"
POLICY, JUDGE = 0, 1
"""The two parts of a user's head: what PPO optimises, and the gate's judge."""
UserSource = Callable[[str], Path | None]
"""Returns the file ``UserHeadPool.save`` wrote for a user, or None when there is none."""
EvictHook = Callable[[str], None]
"""Called with a user id while its head is still resident, just before eviction."""


class UserHead(nn.Module):
    """One user's residual rewards: r_part(e) = e . weight[part] + bias[part], (B, F) -> (B,).

    Zero-initialised, so a new user's reward equals the shared reward. ``n_examples[part]``
    records how many examples that part was last trained on (the fallback rule reads it).
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(2, hidden_size))  # (2, H): policy, judge
        self.bias = nn.Parameter(torch.zeros(2))  # (2,)
        self.register_buffer("n_examples", torch.zeros(2, dtype=torch.int64))

    def forward(self, emb: Tensor, part: int = POLICY) -> Tensor:
        return emb @ self.weight[part] + self.bias[part]  # (B, F) -> (B,)


class UserHeadPool:
    """An LRU of user heads with safetensors save/load of one user's head."""

    def __init__(self, hidden_size: int, device: torch.device | str, max_resident: int,
                 user_source: UserSource | None = None, on_evict: EvictHook | None = None
                 ) -> None:
        if max_resident < 1:
            raise ValueError(f"max_resident must be >= 1, got {max_resident}")
        self.hidden_size = hidden_size
        self.device = device
        self.max_resident = max_resident
        self.user_source = user_source
        self.on_evict = on_evict
        self._heads: OrderedDict[str, UserHead] = OrderedDict()  # LRU first

    def get(self, user_id: str) -> UserHead | None:
        """The user's head: resident, else reloaded via ``user_source``, else None."""
        if user_id in self._heads:
            self._heads.move_to_end(user_id)
            return self._heads[user_id]
        source = self.user_source(user_id) if self.user_source else None
        if source is not None:
            try:
                self.load(user_id, source)
            except ValueError as exc:  # e.g. saved with other features: retrained from data
                logger.warning("ignoring the saved reward head of user %s: %s", user_id, exc)
        return self._heads.get(user_id)

    def get_or_create(self, user_id: str) -> UserHead:
        """The user's head as ``get`` finds it, else a new zero head (== the shared model)."""
        head = self.get(user_id)
        if head is None:
            head = self._insert(user_id, UserHead(self.hidden_size))
        return head

    def resident_users(self) -> list[str]:
        """Resident user ids, least recently used first."""
        return list(self._heads)

    def evict(self, user_id: str) -> None:
        """Run ``on_evict`` for a resident user, then drop its head from memory."""
        if user_id not in self._heads:
            return
        if self.on_evict is not None:
            self.on_evict(user_id)
        del self._heads[user_id]
        logger.debug("evicted reward head of user %s", user_id)

    def forget(self, user_id: str) -> None:
        """Drop a user's head without ``on_evict`` (an erased user: nothing is saved)."""
        self._heads.pop(user_id, None)

    def state_dict(self, user_id: str) -> dict[str, Tensor]:
        """A CPU copy of a resident user's head: weight (2, H), bias (2,), n_examples (2,)."""
        head = self._heads[user_id]
        return {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}

    def load_state_dict(self, user_id: str, state: dict[str, Tensor]) -> None:
        """Install (or replace) a user's head from ``state_dict`` output, validated first."""
        head = UserHead(self.hidden_size)
        check_state(state, {k: v.shape for k, v in head.state_dict().items()})
        head.load_state_dict(state)
        self._insert(user_id, head)

    def save(self, user_id: str, path: str | Path) -> Path:
        """Write a resident user's head to a safetensors file."""
        meta = {"format": USER_FORMAT, "user_id": user_id, "hidden_size": str(self.hidden_size)}
        save_file(self.state_dict(user_id), str(path), metadata=meta)
        return Path(path)

    def load(self, user_id: str, path: str | Path) -> None:
        """Load a head written by ``save``; refuses a file saved for another user."""
        state, meta = read_safetensors(path, USER_FORMAT)
        if meta.get("user_id") != user_id:
            raise ValueError(f"{path} holds the reward head of another user")
        self.load_state_dict(user_id, state)

    def _insert(self, user_id: str, head: UserHead) -> UserHead:
        """Make ``head`` the user's (most recently used) head, evicting beyond capacity."""
        self._heads.pop(user_id, None)
        self._heads[user_id] = head = head.to(self.device)
        while len(self._heads) > self.max_resident:
            self.evict(next(iter(self._heads)))
        return head


def check_state(state: dict[str, Tensor], shapes: dict[str, torch.Size]) -> None:
    """Refuse a state dict with other keys, other shapes or non-finite values."""
    if set(state) != set(shapes):
        raise ValueError(f"state keys {sorted(state)} != expected {sorted(shapes)}")
    for key, value in state.items():
        if value.shape != shapes[key]:
            raise ValueError(f"{key}: shape {tuple(value.shape)} != {tuple(shapes[key])}")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"{key}: non-finite values")


def read_safetensors(path: str | Path, fmt: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file written in format ``fmt``."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != fmt:
            raise ValueError(f"{path} is not a {fmt} file (format {meta.get('format')!r})")
        return {k: f.get_tensor(k) for k in f.keys()}, meta  # noqa: SIM118
