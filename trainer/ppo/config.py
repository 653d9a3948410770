"""Typed, frozen configuration and results of per-user PPO."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

RewardFn = Callable[[list[str], list[str]], Tensor]
"""``reward_fn(prompts, completions) -> scores (B,)``: one scalar score per completion.
``prompts`` are the chat-templated prompt texts the policy saw."""

StopReason = Literal["threshold", "max_steps", "budget"]


@dataclass(frozen=True)
class PPOConfig:
    """PPO for one user's LoRA policy (Ziegler et al. 2019 / InstructGPT style)."""

    lr: float = 1e-3
    """AdamW learning rate of the user's LoRA and value-head parameters. With 8 completions
    per iteration the gradient is mostly noise, and KL from the base model counts the
    noise's share of each step too: at 3e-3 a rank-8 LoRA on q/v spent the publish gate's
    30-nat KL budget within 24 iterations, while 1e-3 stayed under it for 36 and won more
    against the base model (exact reward, bench.advantage; and bench.learning online,
    docs/benchmarks.md). At 1e-4 it barely moves in eight iterations on a CPU host."""
    lr_start: float | None = None
    """Learning rate of a user's first ``lr_start_steps`` PPO iterations (None: ``lr``
    from the start): a fresh adapter may take larger steps while the gate's KL budget is
    untouched, then ``lr`` keeps the rest of the budget for the signal."""
    lr_start_steps: int = 0
    """How many of a user's first PPO iterations (its total count, across turns) step at
    ``lr_start``."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    batch_size: int = 8
    """Completions per rollout, i.e. per PPO iteration."""
    samples_per_prompt: int = 1
    """Completions sampled for each prompt of a rollout: a rollout covers
    ``batch_size / samples_per_prompt`` distinct prompts."""
    advantage: str = "gae"
    """How a completion's advantage is estimated. "gae": per-token rewards (the KL penalty
    at every token, the score at the last) against the user's value head, by generalised
    advantage estimation. "rloo": the completion's score minus its summed KL penalty,
    against the mean of the other completions of the same prompt (REINFORCE
    leave-one-out), the same at every token; no value head is trained. Needs
    ``samples_per_prompt`` >= 2."""
    mini_batch_size: int = 4
    """Sequences per gradient step inside a PPO epoch."""
    ppo_epochs: int = 2
    """Passes over the rollout batch per PPO iteration. On a CPU the rollout is about half
    of a 2-pass iteration's time, so 4 passes learnt more per second with an exact reward, but spent
    the gate's KL budget twice as fast per iteration and made no established difference
    online (bench.advantage, bench.learning; docs/benchmarks.md)."""
    max_new_tokens: int = 32
    """Longest sampled completion, in tokens."""
    temperature: float = 1.0
    """Sampling temperature; the loss's log-probabilities use the same scaled logits."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0 = off)."""
    missing_eos_penalty: float = 0.0
    """Subtracted from the score of a completion cut at ``max_new_tokens`` (no EOS), as
    TRL's ``missing_eos_penalty``. Off by default: it pushes every user toward shorter
    answers, which is itself a preference; turn it on where truncated answers are a
    defect rather than a matter of taste."""
    kl_coef: float = 0.05
    """Initial weight of the per-token KL penalty against the reference (adapter off)."""
    target_kl: float | None = None
    """Target sequence-level KL of the adaptive KL controller; None keeps kl_coef fixed."""
    kl_horizon: int = 10_000
    """Horizon (in sequences) of the adaptive KL controller."""
    gamma: float = 1.0
    """Discount factor of GAE."""
    lam: float = 1.0
    """Lambda of GAE (1.0: Monte-Carlo returns; with one score at the end of a short
    answer, 0.95 left the early tokens' advantages to a value head that had not yet
    learnt)."""
    cliprange: float = 0.2
    """Clip range of the policy ratio in the surrogate objective."""
    cliprange_value: float = 0.2
    """Clip range of the value prediction around its rollout-time value."""
    vf_coef: float = 0.1
    """Weight of the value loss in the total loss."""
    max_grad_norm: float = 1.0
    """Gradient norm clip over the user's trainable parameters."""
    whiten_advantages: bool = True
    """Normalise advantages to zero mean, unit variance over each rollout batch."""
    reward_threshold: float | None = None
    """Stop a user once a rollout's mean score reaches this value (None = never)."""
    max_steps: int = 20_000
    """Stop a user after this many PPO iterations in total."""
    lora_r: int = 8
    """Rank of fresh user adapters."""
    lora_alpha: int = 16
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input."""
    lora_target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    """Module names that receive LoRA (must match what the serving engine supports)."""
    max_resident_users: int = 16
    """Adapters kept in memory on the shared base model; the least recently used goes first.
    Each costs its LoRA weights, their gradients and AdamW state, and a value head: ~10 MB
    with SmolLM2-135M and the default LoRA. An evicted user's weights ahead of its served
    version are written to the trainer's state directory and resumed at its next load
    (``trainer.loop.working``), but its AdamW state is lost and the load costs time:
    keep this at least the number of users a trainer trains in turn where memory allows."""
    seed: int = 0
    """Seed of sampling and minibatch order (mixed with the user id and step)."""
    device: str = "cpu"
    """Torch device of the base model ("cpu", "cuda", "cuda:1", ...)."""
    dtype: str = "auto"
    """Torch dtype name of the frozen base model's weights ("float32", "bfloat16", ...), or
    "auto": bfloat16 where the device computes it natively (a CUDA GPU with bf16, a CPU
    with AVX512-BF16 or AMX), float32 elsewhere. The user's LoRA and value head are
    trained in float32 whatever the base's dtype (their optimiser steps would round away
    in bf16); vLLM serves the base in bf16 too."""

    def __post_init__(self) -> None:
        positive = ("lr", "batch_size", "mini_batch_size", "ppo_epochs", "max_new_tokens",
                    "temperature", "kl_horizon", "max_steps", "lora_r", "max_resident_users")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"PPOConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.lr_start is not None and not self.lr_start > 0:
            raise ValueError(f"PPOConfig.lr_start must be > 0, got {self.lr_start}")
        if self.lr_start_steps < 0:
            raise ValueError(f"PPOConfig.lr_start_steps must be >= 0, got {self.lr_start_steps}")
        if self.samples_per_prompt < 1 or self.batch_size % self.samples_per_prompt:
            raise ValueError(f"PPOConfig.samples_per_prompt must divide batch_size "
                             f"({self.batch_size}), got {self.samples_per_prompt}")
        if self.advantage not in ("gae", "rloo"):
            raise ValueError(f"PPOConfig.advantage must be 'gae' or 'rloo', got "
                             f"{self.advantage!r}")
        if self.advantage == "rloo" and self.samples_per_prompt < 2:
            raise ValueError("PPOConfig.advantage 'rloo' needs samples_per_prompt >= 2 (the "
                             "baseline is the other samples of the same prompt)")
        if self.mini_batch_size > self.batch_size:
            raise ValueError("PPOConfig.mini_batch_size must not exceed batch_size")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"PPOConfig.top_p must be in (0, 1], got {self.top_p}")
        if self.dtype != "auto" and not isinstance(getattr(torch, self.dtype, None), torch.dtype):
            raise ValueError(f"PPOConfig.dtype must be 'auto' or a torch dtype name, got "
                             f"{self.dtype!r}")
        if self.target_kl is not None and self.target_kl <= 0:
            raise ValueError(f"PPOConfig.target_kl must be > 0 or None, got {self.target_kl}")

    def lr_at(self, step: int) -> float:
        """The learning rate of a user's PPO iteration ``step`` (0-based, its total count)."""
        if self.lr_start is not None and step < self.lr_start_steps:
            return self.lr_start
        return self.lr


@dataclass(frozen=True)
class PPOStepMetrics:
    """What one PPO iteration measured (losses averaged over its minibatch updates)."""

    step: int
    """The user's cumulative iteration number (0-based)."""
    score: float
    """Mean reward-model score of the rollout."""
    kl: float
    """Mean over sequences of the summed per-token KL to the reference, at rollout time."""
    kl_coef: float
    """KL penalty coefficient used for this rollout's rewards."""
    lr: float
    """Learning rate of this iteration's updates."""
    pg_loss: float
    v_loss: float
    approx_kl: float
    """Mean estimate of KL(old policy || updated policy) over the minibatch updates."""
    clipfrac: float
    """Fraction of tokens whose policy ratio was clipped."""
    entropy: float
    """Mean per-token entropy of the policy at rollout time."""
    response_length: float
    """Mean completion length in tokens."""
    step_time_s: float
    """Wall time of the iteration: rollout, scoring, forward passes and updates."""


@dataclass(frozen=True)
class UserProgress:
    """A user's PPO state that outlives the adapter's residency."""

    steps: int
    """PPO iterations done so far."""
    kl_coef: float
    """Current KL penalty coefficient (moves only with the adaptive controller)."""


@dataclass(frozen=True)
class PPORunResult:
    """Outcome of one ``train_user`` call."""

    user_id: str
    steps: int
    """PPO iterations (updates) done in this call."""
    total_steps: int
    """The user's cumulative iterations after this call."""
    reward_before: float
    """Mean score of this call's first rollout (NaN when no rollout ran)."""
    reward_after: float
    """Mean score of this call's last rollout, made before that iteration's update
    (NaN when no rollout ran)."""
    kl: float
    """Mean sequence KL to the reference on the last rollout (NaN when none ran)."""
    stopped_reason: StopReason
    history: tuple[PPOStepMetrics, ...]
