"""A personal reward model: a cross-encoder with trained top layers, a shared head, and two
small heads per user.

    e = [encoder(prompt, completion), lexical(completion), w * log(1 + len(completion))]
                                                          (F,) = (F_enc + D + 1,)
    reward(user, ·) = shared_head(e) + policy_u(e)       what PPO optimises
    judge(user, ·)  = shared_head(e) + judge_u(e)        what the publish gate trusts

1. Encoder (``TextEncoder``): a HF encoder (default all-MiniLM-L6-v2) reads prompt and
   completion together; its lower layers are frozen (their output cached), its top
   ``tuned_layers`` are trained on everyone's pairs, so the features follow whatever the
   users prefer, not a fixed list of them. It concatenates every depth's pooled states
   (F_enc = 7 x 384 for MiniLM), so a head can weigh word-level and meaning-level
   evidence. Beside them, the completion's hashed lexical features
   (``trainer.reward.lexical``: its words, word pairs and word shapes; D = ``lexical_dim``)
   carry its exact wording, and the log of its length in characters
   (``length_weight`` w) how long it is: neither of the others says, and each head weighs
   it as it weighs any other input.
2. Shared head: ``nn.Linear(H, 1)``, the positive-class logit of a "preferred" classifier.
3. Per-user heads (``UserHead``): two residuals of F + 1 floats, zero-initialised (a new
   user scores exactly like the shared model), L2-pulled toward zero (a Gaussian prior
   centred on the shared model). The policy head trains on all of the user's training
   prompts (``policy_head_data`` "all"; "half": fold 0 only), the judge head on fold 1
   (``fold_of``, by prompt): the judge is a second reward model, fitted on a subset
   without the gate's held-out prompts, which PPO never optimised.
4. Fallback: a head is used only once it trained on ``user_min_examples`` examples;
   before, the user gets exactly the shared reward.

Training, per turn of a user:
- ``train_shared``: ``shared_steps`` minibatches from the shared sample (everyone's examples,
  minus each user's held-out prompts); each example is scored with the shared head plus
  its own user's head for its fold (multi-task, as in LoRe's shared basis with per-user
  weights), and the top layers and the shared head take the gradient. Conflicting users
  do not cancel out: their heads point different ways over shared features.
- ``train_user``: the encoder frozen, the user's two heads on cached embeddings (logistic
  regression solved by L-BFGS: convex, so the fit is the same optimum whatever its
  start; deterministic), each with its own L2 strength, chosen by cross-validation over
  the prompts of its share of the user's data (``trainer.reward.fit``) when
  ``user_l2_grid`` is set.

Losses: Bradley-Terry on pairs, BCE with logits on thumbs (``trainer.reward.losses``).
Held-out data: ``split_heldout`` keeps a hash-chosen share of each user's *prompts* (so
whole rankings) out of all training; ``TrainMetrics`` compares the policy head, the judge
and the shared model on them.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from trainer.reward.config import RewardModelConfig, TrainMetrics
from trainer.reward.data import (
    Example,
    PairExample,
    ThumbExample,
    fold_of,
    split_heldout,
)
from trainer.reward.encoder import TextEncoder, default_backbone_dir
from trainer.reward.fit import HeadFit, choose_l2, examples_loss, fit_head
from trainer.reward.lexical import lexical_features
from trainer.reward.losses import pairwise_accuracy_from_rewards, pairwise_loss, thumbs_loss
from trainer.reward.users import (
    JUDGE,
    POLICY,
    EvictHook,
    UserHead,
    UserHeadPool,
    UserSource,
    check_state,
    read_safetensors,
)

__all__ = [
    "JUDGE", "POLICY", "PairExample", "PersonalRewardModel", "RewardModelConfig",
    "ThumbExample", "TrainMetrics", "UserHead", "pairwise_loss", "split_heldout",
    "thumbs_loss",
]

logger = logging.getLogger(__name__)

SHARED_FORMAT = "personal-reward-shared/3"


class PersonalRewardModel:
    """Shared encoder and head plus an LRU of per-user (policy, judge) heads."""

    def __init__(self, config: RewardModelConfig, encoder: TextEncoder | None = None,
                 user_source: UserSource | None = None, on_evict: EvictHook | None = None
                 ) -> None:
        self.config = config
        self.encoder = encoder or TextEncoder.from_pretrained(
            config.backbone or default_backbone_dir(), config.device,
            max_length=config.max_length, pooling=config.pooling, normalize=config.normalize,
            batch_size=config.encode_batch_size, cache_size=config.embedding_cache_size,
            tuned_layers=config.tuned_layers, state_cache_size=config.state_cache_size,
            layer_pooling=config.layer_pooling, completion_pooling=config.completion_pooling)
        if self.encoder.completion_pooling != config.completion_pooling:
            raise ValueError(f"the encoder pools the completion by "
                             f"{self.encoder.completion_pooling}, the config asks for "
                             f"{config.completion_pooling}")
        self.hidden_size = (self.encoder.feature_size + config.lexical_dim
                            + (config.length_weight > 0))
        """Width of the heads' input e: the encoder's features, the lexical ones, then the
        completion's log length (where ``length_weight`` > 0)."""
        # the lexical block's norm relative to the encoder's (unit-norm blocks, each)
        self._lexical_scale = config.lexical_weight * self.encoder.blocks ** 0.5
        self.shared_head = nn.Linear(self.hidden_size, 1).to(self.encoder.device)
        nn.init.zeros_(self.shared_head.weight)
        nn.init.zeros_(self.shared_head.bias)
        self.shared_head.requires_grad_(False)
        self.users = UserHeadPool(self.hidden_size, self.encoder.device,
                                  config.max_resident_users, user_source, on_evict)

    # --- scoring -------------------------------------------------------------------------

    def score(self, user_id: str, prompts: Sequence[str], completions: Sequence[str]) -> Tensor:
        """Rewards (B,) for ``user_id`` by the policy head (what PPO optimises): personal when
        the head has enough data, else exactly the shared reward."""
        return self._score(self._head(user_id), POLICY, prompts, completions)

    def judge(self, user_id: str, prompts: Sequence[str], completions: Sequence[str]) -> Tensor:
        """Rewards (B,) for ``user_id`` by the judge head (trained on fold 1 of the user's
        training prompts; PPO never optimises it), else exactly the shared reward."""
        return self._score(self._head(user_id, JUDGE), JUDGE, prompts, completions)

    def uses_personal(self, user_id: str, part: int = POLICY) -> bool:
        """Whether ``score`` (or ``judge``) uses a personal head for ``user_id``."""
        return self._head(user_id, part) is not None

    def pairwise_accuracy(self, user_id: str, pairs: Sequence[PairExample],
                          personal: bool = True, part: int = POLICY) -> float:
        """Fraction of ``pairs`` ranked right (chosen above rejected) for ``user_id`` by a
        head (``part``) or by the shared model alone; nan without pairs."""
        head = self._head(user_id, part) if personal else None
        accuracy = self._accuracy(head, part, pairs)
        return float("nan") if accuracy is None else accuracy

    # --- training ------------------------------------------------------------------------

    def train_shared(self, pairs: Sequence[PairExample],
                     thumbs: Sequence[ThumbExample] = ()) -> TrainMetrics:
        """Train the encoder's top layers and the shared head on everyone's examples (minus
        each user's held-out prompts), every example scored with its own user's head."""
        cfg, start = self.config, time.perf_counter()
        # 1. held-out split, per user and prompt (the same examples train_user holds out)
        items, held = split_heldout([*pairs, *thumbs], cfg.heldout_fraction, cfg.seed)
        held_pairs = [e for e in held if isinstance(e, PairExample)]
        # 2. a bounded number of steps on random minibatches, shared head + top layers
        encode_s, steps, losses = self._warm(items, pooled=False), 0, [float("nan")]
        params = [*self.shared_head.parameters(), *self.encoder.trainable_parameters()]
        groups = [{"params": list(self.shared_head.parameters()), "lr": cfg.shared_lr}]
        if self.encoder.trainable_parameters():
            groups.append({"params": self.encoder.trainable_parameters(),
                           "lr": cfg.backbone_lr})
        optimizer = torch.optim.Adam(groups)
        rng = random.Random(cfg.seed ^ len(items))
        with _trainable(params):
            losses = []
            for _ in range(cfg.shared_steps if items else 0):
                batch = rng.sample(items, min(cfg.shared_batch_size, len(items)))
                loss = self._batch_loss(batch, self._heads_of, grad=True) \
                    + cfg.shared_l2 * self.shared_head.weight.pow(2).sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                steps += 1
                losses.append(loss.item())
        if steps and self.encoder.top:  # a frozen encoder's cached embeddings stay valid
            self.encoder.mark_updated()
        # 3. evaluate on the held-out pairs
        accuracy = self._accuracy(None, POLICY, held_pairs)
        metrics = TrainMetrics(
            user_id=None, n_train=len(items), n_heldout=len(held),
            n_heldout_pairs=len(held_pairs), epochs=0, steps=steps,
            loss=sum(losses) / len(losses) if losses else float("nan"),
            heldout_accuracy=accuracy, heldout_accuracy_shared=accuracy, personal=False,
            encode_seconds=encode_s, seconds=time.perf_counter() - start)
        logger.info("trained shared reward model: %s", metrics)
        return metrics

    def train_user(self, user_id: str, pairs: Sequence[PairExample],
                   thumbs: Sequence[ThumbExample] = ()) -> TrainMetrics:
        """Train ``user_id``'s two heads on the user's current data set (not a delta), warm-
        starting from their present weights: the policy head on all the training prompts
        (fold 0 only with ``policy_head_data`` "half"), the judge head on fold 1. A head
        with fewer than ``user_min_examples`` examples is not trained, and its user keeps
        the shared reward for that part."""
        cfg, start = self.config, time.perf_counter()
        _check_owner(user_id, [*pairs, *thumbs])
        # 1. held-out split by prompt, then each head's share of the rest
        items, held = split_heldout([*pairs, *thumbs], cfg.heldout_fraction, cfg.seed)
        held_pairs = [e for e in held if isinstance(e, PairExample)]
        encode_s = self._warm(items, pooled=True)
        epochs, steps, losses = 0, 0, []
        l2s: list[float | None] = [None, None]  # the strength each part was fitted with
        # 2. each head on its share: shared reward + residual, L2 toward the shared model
        for part in (POLICY, JUDGE):
            fold = self._share(items, part)
            if len(fold) < cfg.user_min_examples:
                logger.info("user %s has %s examples for head %s (< %s): shared reward",
                            user_id, len(fold), part, cfg.user_min_examples)
                continue
            head = self.users.get_or_create(user_id)
            fit, l2s[part] = self._fit_head(head, part, fold)
            epochs, steps = 1, steps + fit.iterations
            losses.append(fit.loss)
            head.n_examples[part] = len(fold)
        # 3. evaluate the policy head, the judge and the shared model on held-out pairs
        metrics = TrainMetrics(
            user_id=user_id, n_train=len(items), n_heldout=len(held),
            n_heldout_pairs=len(held_pairs), epochs=epochs, steps=steps,
            loss=sum(losses) / len(losses) if losses else float("nan"),
            heldout_accuracy=self._accuracy(self._head(user_id), POLICY, held_pairs),
            heldout_accuracy_shared=self._accuracy(None, POLICY, held_pairs),
            heldout_accuracy_judge=self._accuracy(self._head(user_id, JUDGE), JUDGE,
                                                  held_pairs),
            personal=self.uses_personal(user_id), user_l2=(l2s[POLICY], l2s[JUDGE]),
            encode_seconds=encode_s, seconds=time.perf_counter() - start)
        logger.info("trained reward heads of user %s: %s", user_id, metrics)
        return metrics

    def _share(self, items: Sequence[Example], part: int) -> list[Example]:
        """The training examples head ``part`` fits: the judge's fold 1; the policy head's
        every example ("all") or fold 0 ("half")."""
        if part == POLICY and self.config.policy_head_data == "all":
            return list(items)
        return [e for e in items if fold_of(e, self.config.seed) == part]

    def _fit_head(self, head: UserHead, part: int, items: list[Example]
                  ) -> tuple[HeadFit, float]:
        """One head part's logistic regression on cached embeddings (encoder and shared head
        fixed), warm-started from its present weights (``trainer.reward.fit``): with an
        L2 strength chosen by cross-validation over the user's prompts from
        ``user_l2_grid``, else (no grid, or too few prompts) ``user_l2``; (fit, strength)."""
        cfg = self.config
        with torch.no_grad():
            e = self.head_inputs(*_texts(items))  # (2P + M, F)
            shared = self.shared_head(e).squeeze(-1)  # (2P + M,)
        choice = choose_l2(e, shared, items, cfg.user_l2_grid, cfg.user_cv_folds, cfg.seed,
                           cfg.user_max_iter) if cfg.user_l2_grid else None
        l2 = cfg.user_l2 if choice is None else choice.l2
        fit = fit_head(e, shared, items, l2, head.weight[part], head.bias[part],
                       cfg.user_max_iter)
        with torch.no_grad():  # only this part's row moves: the other head keeps its weights
            head.weight[part] = fit.weight
            head.bias[part] = fit.bias
        return fit, l2

    def _heads_of(self, example: Example) -> tuple[UserHead, int] | None:
        """The head (and part) an example of the shared sample is scored with: its fold's,
        which trained on it."""
        part = fold_of(example, self.config.seed)
        head = self._head(example.user_id, part)
        return None if head is None else (head, part)

    def _batch_loss(self, batch: Sequence[Example],
                    heads: Callable[[Example], tuple[UserHead, int] | None],
                    grad: bool) -> Tensor:
        """The batch's loss, every example scored by the shared head plus its own head."""
        prompts, completions = _texts(batch)
        e = self._with_text_features(self.encoder.embed(prompts, completions, grad=grad),
                                     completions)  # (2P + M, F)
        pairs = [x for x in batch if isinstance(x, PairExample)]
        owners = [*pairs, *pairs, *[x for x in batch if isinstance(x, ThumbExample)]]
        residual = torch.stack([_residual(heads(o), row) for o, row in zip(owners, e,
                                                                           strict=True)])
        return examples_loss(self.shared_head(e).squeeze(-1) + residual, batch)

    def _warm(self, items: Sequence[Example], pooled: bool) -> float:
        """Fill the caches for ``items`` in large batches, once; seconds it took. The heads
        train on pooled embeddings (``pooled``); the shared step only reads lower-layer
        states, so pooling the whole sample through the top layers it is about to change
        would be wasted. Only the encoder's features are cached: the lexical ones are
        computed where the heads read them."""
        start = time.perf_counter()
        if pooled:
            self.encoder.embed(*_texts(items))
        else:
            self.encoder.warm(*_texts(items))
        return time.perf_counter() - start

    # --- rewards -------------------------------------------------------------------------

    def head_inputs(self, prompts: Sequence[str], completions: Sequence[str]) -> Tensor:
        """The heads' input e (B, F) under the current encoder (no gradient; the encoder's
        part cached)."""
        return self._with_text_features(self.encoder.embed(prompts, completions), completions)

    def _with_text_features(self, encoded: Tensor, completions: Sequence[str]) -> Tensor:
        """(B, F_enc) encoder features -> (B, F) with the completions' lexical features and
        log length."""
        blocks = [encoded]
        if self.config.lexical_dim:
            lexical = lexical_features(completions, self.config.lexical_dim, encoded.device)
            blocks.append(self._lexical_scale * lexical.to(encoded.dtype))  # (B, D)
        if self.config.length_weight > 0:
            chars = torch.tensor([[float(len(c))] for c in completions],
                                 device=encoded.device, dtype=encoded.dtype)  # (B, 1)
            blocks.append(self.config.length_weight * torch.log1p(chars))
        return torch.cat(blocks, dim=1) if len(blocks) > 1 else encoded

    def _score(self, head: UserHead | None, part: int, prompts: Sequence[str],
               completions: Sequence[str]) -> Tensor:
        with torch.no_grad():
            e = self.head_inputs(prompts, completions)  # (B, H)
            r = self.shared_head(e).squeeze(-1)  # (B,)
            return r if head is None else r + head(e, part)

    def _accuracy(self, head: UserHead | None, part: int,
                  pairs: Sequence[PairExample]) -> float | None:
        if not pairs:
            return None
        prompts, completions = _texts(pairs)
        r = self._score(head, part, prompts, completions)  # (2P,)
        return pairwise_accuracy_from_rewards(r[:len(pairs)], r[len(pairs):])

    # --- per-user residency --------------------------------------------------------------

    def _head(self, user_id: str, part: int = POLICY) -> UserHead | None:
        head = self.users.get(user_id)
        if head is None or int(head.n_examples[part]) < self.config.user_min_examples:
            return None
        return head

    # --- persistence (safetensors) -------------------------------------------------------

    def save_user(self, user_id: str, path: str | Path) -> Path:
        """Write a resident user's heads to a safetensors file (see ``UserHeadPool.save``)."""
        return self.users.save(user_id, path)

    def load_user(self, user_id: str, path: str | Path) -> None:
        """Load heads written by ``save_user``; refuses a file saved for another user."""
        self.users.load(user_id, path)

    def save_shared(self, path: str | Path) -> Path:
        """Write the shared head and the encoder's trained top layers to a safetensors file."""
        state = {f"head.{k}": v for k, v in self.shared_head.state_dict().items()}
        state |= {f"top.{k}": v for k, v in self.encoder.top.state_dict().items()}
        meta = {"format": SHARED_FORMAT, "hidden_size": str(self.hidden_size),
                **self._shared_settings()}
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path),
                  metadata=meta)
        return Path(path)

    def _shared_settings(self) -> dict[str, str]:
        """The settings a shared file must have been trained with, as its metadata holds
        them."""
        names = ("pooling", "normalize", "tuned_layers", "layer_pooling", "completion_pooling",
                 "lexical_dim", "lexical_weight", "length_weight")
        return {n: ",".join(v) if isinstance(v := getattr(self.config, n), tuple) else str(v)
                for n in names}

    def load_shared(self, path: str | Path) -> None:
        """Load what ``save_shared`` wrote (same pooling, normalisation, tuned layers, pooled
        depths and lexical features)."""
        state, meta = read_safetensors(path, SHARED_FORMAT)
        now = self._shared_settings()
        names = tuple(now)
        settings = tuple(now.values())
        # files from before completion_pooling existed were saved without it (none)
        saved = tuple(meta.get(n, "" if n == "completion_pooling" else None) for n in names)
        if saved != settings:
            raise ValueError(f"{path} was trained with other settings: "
                             f"{dict(zip(names, saved, strict=True))} (now "
                             f"{dict(zip(names, settings, strict=True))})")
        head = {k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}
        check_state(head, {k: v.shape for k, v in self.shared_head.state_dict().items()})
        self.shared_head.load_state_dict(head)
        top = {k.removeprefix("top."): v for k, v in state.items() if k.startswith("top.")}
        check_state(top, {k: v.shape for k, v in self.encoder.top.state_dict().items()})
        self.encoder.top.load_state_dict(top)
        self.encoder.mark_updated()


def _residual(found: tuple[UserHead, int] | None, e: Tensor) -> Tensor:
    """The user-head residual of one embedding e (F,): a scalar, 0 without a head."""
    if found is None:
        return e.new_zeros(())
    head, part = found
    return head(e.unsqueeze(0), part).squeeze(0)


@contextmanager
def _trainable(params: Iterable[nn.Parameter]) -> Iterator[None]:
    """Make ``params`` require gradients inside the block, and freeze them again after."""
    held = list(params)
    for p in held:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p in held:
            p.requires_grad_(False)


def _texts(items: Sequence[Example]) -> tuple[list[str], list[str]]:
    """(prompts, completions) of examples in the order chosen..., rejected..., thumbs..."""
    pairs = [e for e in items if isinstance(e, PairExample)]
    thumbs = [e for e in items if isinstance(e, ThumbExample)]
    prompts = [p.prompt for p in pairs] * 2 + [t.prompt for t in thumbs]
    completions = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    return prompts, completions + [t.completion for t in thumbs]


def _check_owner(user_id: str, examples: Iterable[Example]) -> None:
    """A user's heads are only ever trained on that user's own feedback."""
    for example in examples:
        if example.user_id != user_id:
            raise ValueError(f"example of user {example.user_id!r} in the data of {user_id!r}")
