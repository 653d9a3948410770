"""A personal reward model: a shared scalar reward plus a small per-user residual.

reward(user, prompt, completion) = shared_head(x) + user_head(x),  x = [e, s]

e is the pooled encoder embedding and s the completion's surface features (length and
layout, ``trainer.reward.features``; off with ``surface_features=False``).

1. Encoder (``TextEncoder``): a HF encoder (default all-MiniLM-L6-v2) reads the
   (prompt, completion) sentence pair; mean pooling gives e (B, H). It is frozen
   by default, so embeddings are cached and training is cheap on a CPU.
2. Shared head: ``nn.Linear(H + S, 1)`` learned from every user's feedback. Its output is
   the positive-class logit of a binary "preferred" classifier: the reward.
3. Per-user head: r_user(x) = x . w_u + b_u, H + S + 1 floats (~1.6 KB for MiniLM), so
   thousands of users fit in memory. It is zero-initialised (a new user scores exactly
   like the shared model) and trained with an L2 penalty toward zero (``user_l2``): a
   Gaussian prior centred on the shared model, so a user's reward moves away from the
   population's only as far as their own data supports.
4. Fallback: ``score`` uses the personal head only when it was trained on at least
   ``user_min_examples`` examples; otherwise it returns the shared reward, bit for bit.

Losses: Bradley-Terry on pairs and BCE with logits on thumbs (``trainer.reward.losses``).
With the encoder frozen both training problems are convex (logistic regression on fixed
features), which makes them stable and deterministic from the zero initialisation.

Held-out data: ``split_heldout`` keeps a hash-chosen share of every user's examples out of
both the shared and the personal training, so ``TrainMetrics`` can compare the personal and
the shared model on pairs neither has seen.

Residency: user heads live in ``self.users``, an LRU of ``max_resident_users``
(``trainer.reward.users``) with eviction and reload hooks and safetensors save/load.
``score(user_id, ...)`` bound to a user (``functools.partial``) is the ``RewardFn`` of PPO.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from trainer.reward.config import RewardModelConfig, TrainMetrics
from trainer.reward.data import Example, PairExample, ThumbExample, split_heldout, stable_hash
from trainer.reward.encoder import TextEncoder, default_backbone_dir
from trainer.reward.features import SURFACE_FEATURES, surface_features
from trainer.reward.losses import pairwise_accuracy_from_rewards, pairwise_loss, thumbs_loss
from trainer.reward.users import (
    EvictHook,
    UserHead,
    UserHeadPool,
    UserSource,
    check_state,
    read_safetensors,
)

__all__ = [
    "PairExample", "PersonalRewardModel", "RewardModelConfig", "ThumbExample", "TrainMetrics",
    "UserHead", "pairwise_loss", "split_heldout", "thumbs_loss",
]

logger = logging.getLogger(__name__)

SHARED_FORMAT = "personal-reward-shared/1"


class PersonalRewardModel:
    """Shared encoder and head plus an LRU of per-user residual heads."""

    def __init__(self, config: RewardModelConfig, encoder: TextEncoder | None = None,
                 user_source: UserSource | None = None, on_evict: EvictHook | None = None
                 ) -> None:
        self.config = config
        self.encoder = encoder or TextEncoder.from_pretrained(
            config.backbone or default_backbone_dir(), config.device,
            max_length=config.max_length, pooling=config.pooling, normalize=config.normalize,
            batch_size=config.encode_batch_size, cache_size=config.embedding_cache_size)
        self.surface = SURFACE_FEATURES if config.surface_features else ()
        """Names of the surface features the heads see (none when off)."""
        self.hidden_size = self.encoder.hidden_size + len(self.surface)
        """Width of the heads' input x = [embedding, surface features]."""
        self.shared_head = nn.Linear(self.hidden_size, 1).to(self.encoder.device)
        nn.init.zeros_(self.shared_head.weight)
        nn.init.zeros_(self.shared_head.bias)
        self.shared_head.requires_grad_(False)
        self.users = UserHeadPool(self.hidden_size, self.encoder.device,
                                  config.max_resident_users, user_source, on_evict)
        self._backbone_tuned = False

    # --- scoring -------------------------------------------------------------------------

    def score(self, user_id: str, prompts: Sequence[str], completions: Sequence[str]) -> Tensor:
        """Rewards (B,) of the completions for ``user_id``: personal when the user's head has
        enough data, else exactly the shared reward."""
        return self._score(self._personal_head(user_id), prompts, completions)

    def uses_personal(self, user_id: str) -> bool:
        """Whether ``score`` uses a personal head for ``user_id``."""
        return self._personal_head(user_id) is not None

    def pairwise_accuracy(self, user_id: str, pairs: Sequence[PairExample],
                          personal: bool = True) -> float:
        """Fraction of ``pairs`` ranked right (chosen above rejected) for ``user_id``, by what
        ``score`` uses (``personal``) or by the shared model alone; nan without pairs."""
        head = self._personal_head(user_id) if personal else None
        accuracy = self._accuracy(head, pairs)
        return float("nan") if accuracy is None else accuracy

    # --- training ------------------------------------------------------------------------

    def train_shared(self, pairs: Sequence[PairExample],
                     thumbs: Sequence[ThumbExample] = ()) -> TrainMetrics:
        """Train the shared head (and the backbone when ``backbone_lr`` > 0) on every user's
        examples, minus each user's held-out share."""
        cfg, start = self.config, time.perf_counter()
        # 1. held-out split, per user (the same examples train_user holds out)
        train_pairs, held_pairs = split_heldout(pairs, cfg.heldout_fraction, cfg.seed)
        train_thumbs, held_thumbs = split_heldout(thumbs, cfg.heldout_fraction, cfg.seed)
        # 2. optimise the shared head (+ backbone) on Bradley-Terry + BCE
        tune = cfg.backbone_lr > 0
        groups = [{"params": list(self.shared_head.parameters()), "lr": cfg.shared_lr}]
        if tune:
            groups.append({"params": list(self.encoder.backbone.parameters()),
                           "lr": cfg.backbone_lr})
        modules = [self.shared_head, *([self.encoder.backbone] if tune else [])]
        items: list[Example] = [*train_pairs, *train_thumbs]
        with _trainable(modules):
            steps, loss, encode_s = self._fit(
                items, None, torch.optim.Adam(groups), cfg.shared_epochs,
                lambda: cfg.shared_l2 * self.shared_head.weight.pow(2).sum(), tune, cfg.seed)
        if tune and steps:
            self._backbone_tuned = True
            self.encoder.clear_cache()
        # 3. evaluate on the held-out pairs
        accuracy = self._accuracy(None, held_pairs)
        metrics = TrainMetrics(
            user_id=None, n_train=len(items), n_heldout=len(held_pairs) + len(held_thumbs),
            n_heldout_pairs=len(held_pairs),
            epochs=cfg.shared_epochs if steps else 0, steps=steps, loss=loss,
            heldout_accuracy=accuracy, heldout_accuracy_shared=accuracy, personal=False,
            encode_seconds=encode_s, seconds=time.perf_counter() - start)
        logger.info("trained shared reward head: %s", metrics)
        return metrics

    def train_user(self, user_id: str, pairs: Sequence[PairExample],
                   thumbs: Sequence[ThumbExample] = ()) -> TrainMetrics:
        """Train ``user_id``'s head on the user's current data set (not a delta), warm-starting
        from its present weights. Below ``user_min_examples`` training examples nothing is
        trained and ``score`` keeps (or starts) falling back to the shared reward."""
        cfg, start = self.config, time.perf_counter()
        _check_owner(user_id, [*pairs, *thumbs])
        # 1. held-out split, deterministic per user
        train_pairs, held_pairs = split_heldout(pairs, cfg.heldout_fraction, cfg.seed)
        train_thumbs, held_thumbs = split_heldout(thumbs, cfg.heldout_fraction, cfg.seed)
        items: list[Example] = [*train_pairs, *train_thumbs]
        epochs, steps, loss, encode_s = 0, 0, float("nan"), 0.0
        # 2. optimise the user's head only: shared reward + residual, L2 toward the shared model
        if len(items) >= cfg.user_min_examples:
            head = self.users.get_or_create(user_id)
            epochs = cfg.user_epochs
            optimizer = torch.optim.Adam(head.parameters(), lr=cfg.user_lr)
            steps, loss, encode_s = self._fit(
                items, head, optimizer, epochs,
                lambda: cfg.user_l2 * (head.weight.pow(2).sum() + head.bias.pow(2).sum()),
                False, cfg.seed ^ stable_hash(user_id))
            head.n_examples.fill_(len(items))
        else:
            logger.info("user %s has %s training examples (< %s): no personal training",
                        user_id, len(items), cfg.user_min_examples)
        # 3. evaluate personal vs shared on the user's held-out pairs
        metrics = TrainMetrics(
            user_id=user_id, n_train=len(items), n_heldout=len(held_pairs) + len(held_thumbs),
            n_heldout_pairs=len(held_pairs),
            epochs=epochs, steps=steps, loss=loss,
            heldout_accuracy=self._accuracy(self._personal_head(user_id), held_pairs),
            heldout_accuracy_shared=self._accuracy(None, held_pairs),
            personal=self.uses_personal(user_id), encode_seconds=encode_s,
            seconds=time.perf_counter() - start)
        logger.info("trained reward head of user %s: %s", user_id, metrics)
        return metrics

    def _fit(self, items: list[Example], head: UserHead | None,
             optimizer: torch.optim.Optimizer, epochs: int, penalty: Callable[[], Tensor],
             grad_backbone: bool, seed: int) -> tuple[int, float, float]:
        """Minibatch training loop; returns (steps, mean loss of the last epoch, encode s)."""
        encode_start = time.perf_counter()
        if not grad_backbone:  # fill the embedding cache in large batches, once
            self.head_inputs(*_texts(items))
        encode_s = time.perf_counter() - encode_start
        generator = torch.Generator().manual_seed(seed % 2**63)
        steps, losses = 0, [float("nan")]
        for _epoch in range(epochs if items else 0):
            order = torch.randperm(len(items), generator=generator).tolist()
            losses = []
            for begin in range(0, len(items), self.config.batch_size):
                batch = [items[i] for i in order[begin:begin + self.config.batch_size]]
                loss = self._batch_loss(batch, head, grad_backbone) + penalty()  # scalar
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                steps += 1
                losses.append(loss.item())
        return steps, sum(losses) / len(losses), encode_s

    def _batch_loss(self, batch: list[Example], head: UserHead | None,
                    grad_backbone: bool) -> Tensor:
        """Example-weighted mean of the Bradley-Terry loss (pairs) and BCE (thumbs)."""
        pairs = [e for e in batch if isinstance(e, PairExample)]
        thumbs = [e for e in batch if isinstance(e, ThumbExample)]
        x = self.head_inputs(*_texts([*pairs, *thumbs]), grad=grad_backbone)  # (2P + M, H + S)
        r = self._reward(x, head)  # (2P + M,)
        n_p = len(pairs)
        loss = r.new_zeros(())
        if pairs:
            weight = r.new_tensor([p.weight for p in pairs])  # (P,)
            loss = loss + n_p * pairwise_loss(r[:n_p], r[n_p:2 * n_p], weight)
        if thumbs:
            label = r.new_tensor([t.label for t in thumbs])  # (M,)
            weight = r.new_tensor([t.weight for t in thumbs])  # (M,)
            loss = loss + len(thumbs) * thumbs_loss(r[2 * n_p:], label, weight)
        return loss / len(batch)

    # --- rewards -------------------------------------------------------------------------

    def head_inputs(self, prompts: Sequence[str], completions: Sequence[str],
                    grad: bool = False) -> Tensor:
        """The heads' input x = [embedding (B, H), surface features (B, S)]."""
        emb = self.encoder.embed(prompts, completions, grad=grad)  # (B, H)
        if not self.surface:
            return emb
        return torch.cat([emb, surface_features(completions, emb.device).to(emb.dtype)], 1)

    def _reward(self, x: Tensor, head: UserHead | None) -> Tensor:
        """Shared reward plus the user's residual when given: (B, H + S) -> (B,)."""
        r = self.shared_head(x).squeeze(-1)  # (B,)
        return r if head is None else r + head(x)

    def _score(self, head: UserHead | None, prompts: Sequence[str],
               completions: Sequence[str]) -> Tensor:
        with torch.no_grad():
            return self._reward(self.head_inputs(prompts, completions), head)  # (B,)

    def _accuracy(self, head: UserHead | None, pairs: Sequence[PairExample]) -> float | None:
        if not pairs:
            return None
        prompts, completions = _texts(pairs)
        r = self._score(head, prompts, completions)  # (2P,)
        return pairwise_accuracy_from_rewards(r[:len(pairs)], r[len(pairs):])

    # --- per-user residency --------------------------------------------------------------

    def _personal_head(self, user_id: str) -> UserHead | None:
        head = self.users.get(user_id)
        if head is None or int(head.n_examples) < self.config.user_min_examples:
            return None
        return head

    # --- persistence (safetensors) -------------------------------------------------------

    def save_user(self, user_id: str, path: str | Path) -> Path:
        """Write a resident user's head to a safetensors file (see ``UserHeadPool.save``)."""
        return self.users.save(user_id, path)

    def load_user(self, user_id: str, path: str | Path) -> None:
        """Load a head written by ``save_user``; refuses a file saved for another user."""
        self.users.load(user_id, path)

    def save_shared(self, path: str | Path) -> Path:
        """Write the shared head (and the backbone, once tuned) to a safetensors file."""
        state = {f"head.{k}": v for k, v in self.shared_head.state_dict().items()}
        if self._backbone_tuned:
            state |= {f"backbone.{k}": v for k, v in self.encoder.backbone.state_dict().items()}
        meta = {"format": SHARED_FORMAT, "hidden_size": str(self.hidden_size),
                "pooling": self.config.pooling, "normalize": str(self.config.normalize),
                "surface_features": ",".join(self.surface)}
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path),
                  metadata=meta)
        return Path(path)

    def load_shared(self, path: str | Path) -> None:
        """Load what ``save_shared`` wrote (same hidden size, pooling, normalisation and
        surface features)."""
        state, meta = read_safetensors(path, SHARED_FORMAT)
        settings = (self.config.pooling, str(self.config.normalize), ",".join(self.surface))
        saved = (meta.get("pooling"), meta.get("normalize"), meta.get("surface_features", ""))
        if saved != settings:
            raise ValueError(f"{path} was trained with other pooling, normalisation or "
                             "surface-feature settings")
        head = {k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}
        check_state(head, {k: v.shape for k, v in self.shared_head.state_dict().items()})
        self.shared_head.load_state_dict(head)
        backbone = {k.removeprefix("backbone."): v for k, v in state.items()
                    if k.startswith("backbone.")}
        if backbone:
            self.encoder.backbone.load_state_dict(backbone)
            self.encoder.clear_cache()
            self._backbone_tuned = True


@contextmanager
def _trainable(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Make ``modules`` require gradients inside the block, and freeze them again after."""
    held = list(modules)
    for module in held:
        module.requires_grad_(True)
    try:
        yield
    finally:
        for module in held:
            module.requires_grad_(False)


def _texts(items: Sequence[Example]) -> tuple[list[str], list[str]]:
    """(prompts, completions) of examples in the order chosen..., rejected..., thumbs..."""
    pairs = [e for e in items if isinstance(e, PairExample)]
    thumbs = [e for e in items if isinstance(e, ThumbExample)]
    prompts = [p.prompt for p in pairs] * 2 + [t.prompt for t in thumbs]
    completions = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    return prompts, completions + [t.completion for t in thumbs]


def _check_owner(user_id: str, examples: Iterable[Example]) -> None:
    """A user's head is only ever trained on that user's own feedback."""
    for example in examples:
        if example.user_id != user_id:
            raise ValueError(f"example of user {example.user_id!r} in the data of {user_id!r}")
