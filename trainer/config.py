"""Typed, frozen configuration of the trainer, parsed once at its entry point
(``PERSONALIZE_TRAINER_<FIELD>`` environment variables or flags)."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.contract.config import KafkaConfig
from trainer.data.preferences import PreferenceConfig
from trainer.loop.online import OnlineConfig
from trainer.ppo.config import PPOConfig
from trainer.reward.config import RewardModelConfig


@dataclass(frozen=True)
class ScheduleConfig:
    """When a user's training turn starts, and how long it may run."""

    min_new_feedback: int = 6
    """New joined feedback events that make a user due for training."""
    max_wait_s: float = 60.0
    """A user with any new feedback is due once the oldest of it is this old."""
    ppo_steps_per_turn: int = 4
    """PPO iterations per turn; users take turns (least recently trained first)."""
    ppo_steps_until_published: int = 0
    """PPO iterations per turn of a user who has no published adapter yet (0: as
    ``ppo_steps_per_turn``). Fewer than ``ppo_steps_per_turn`` bring a new user's first
    adapter as soon as short turns do, while the later, longer turns give each feedback
    event more training (a user's feedback arrives while other users' turns run, so the
    turn length sets the PPO iterations per event)."""
    min_pairs: int = 12
    """Preference pairs (or thumbs) a user needs before PPO runs (fewer train the reward
    model on noise)."""
    idle_sleep_s: float = 0.5
    """Pause of the training loop when no user is due."""
    quarantine_base_s: float = 30.0
    """A user whose turn raised sits out this long before its next turn; each further
    consecutive failure doubles the wait (exponential backoff). Other users train on."""
    quarantine_max_s: float = 3600.0
    """Longest wait of a quarantined user (the backoff stops doubling here)."""
    continue_without_feedback: bool = True
    """When no user is due, keep giving PPO turns to users below their reward threshold
    and step cap (``ppo.reward_threshold``, ``ppo.max_steps``) without new feedback: the
    fitted reward model stands in for the user, as in the seed's loop. False: a user is
    trained only when new feedback makes it due."""
    continue_min_interval_s: float = 10.0
    """Shortest pause between the end of a user's turn and a further turn of that user
    without due feedback (0: as soon as the loop is free). Leaves the CPU to the server
    on a small host; due users never wait for it."""

    def __post_init__(self) -> None:
        if self.ppo_steps_per_turn < 1 or self.ppo_steps_until_published < 0:
            raise ValueError("ScheduleConfig.ppo_steps_per_turn must be >= 1 and "
                             "ppo_steps_until_published >= 0, got "
                             f"{self.ppo_steps_per_turn} and {self.ppo_steps_until_published}")
        if self.continue_min_interval_s < 0:
            raise ValueError("ScheduleConfig.continue_min_interval_s must be >= 0, got "
                             f"{self.continue_min_interval_s}")


@dataclass(frozen=True)
class PublishConfig:
    """The gate a candidate adapter must pass to be published."""

    eval_prompts: int = 4
    """Held-out prompts of the user's history the gate compares adapters on (a stable,
    hash-chosen sample, so the gate's cost does not grow with the history)."""
    eval_samples: int = 4
    """Completions sampled per prompt and adapter for the comparison."""
    min_improvement: float = 0.0
    """Mean personal reward the candidate must gain over the current adapter."""
    kl_bound: float = 30.0
    """Largest mean per-sequence KL to the base model a published adapter may have: a
    safety cap (the judge is what refuses a reward-hacked candidate); 30 nats over a
    32-token answer allows the style shifts users ask for."""
    kl_backoff: float = 2.0
    """When a candidate's KL is over ``kl_bound`` (whatever else the gate found), the user's
    training restarts from the served adapter with the user's KL coefficient multiplied
    by this: training on from a candidate that cannot be published, with the same penalty,
    only drifts further from the base. 1 turns it off (training goes on from the refused
    candidate). The raised coefficient is written in the next published manifest."""
    kl_stop_share: float | None = None
    """Early stop of a turn's PPO at a KL limit of ``kl_stop_share * kl_bound`` nats (as
    CleanRL's ``target_kl``, on the KL to the base model): each rollout measures the adapter
    the iteration began from; once one is past the limit and past where the turn began,
    the adapter goes back to the last iterate measured within both (the candidate the gate
    sees), the turn's PPO stops, and the user's KL coefficient is multiplied by
    ``kl_backoff``. Below 1 it leaves a margin for the gate's own estimate, on other
    prompts. None (the default): every turn runs its iterations and the gate alone checks
    the bound. At 0.8 on the default CPU profile (4 iterations a turn, 8 rollouts each)
    it stopped most turns once users neared the bound, on one rollout's noisy estimate,
    and won nothing (docs/benchmarks.md); it is meant for long turns, where a turn can
    overshoot the bound by far."""
    max_empty_share: float = 0.1
    """Share of empty answers above which a candidate is refused (when the served
    adapter's share is lower by more than ``degenerate_margin``)."""
    max_truncated_share: float = 0.5
    """Share of answers cut at the token limit above which a candidate is refused (when
    the served adapter's share is lower by more than ``degenerate_margin``)."""
    max_repetitive_share: float = 0.25
    """Share of repetitive answers above which a candidate is refused (when the served
    adapter's share is lower by more than ``degenerate_margin``)."""
    degenerate_margin: float = 0.2
    """How much larger than the served adapter's a candidate's share of empty, truncated or
    repetitive answers must be to refuse it. The gate compares few samples (16 by
    default: one answer is 6 points), and at a short sample length most answers of any
    adapter are cut at the limit: 15 of 16 against 14 of 16 is noise, not a defect."""
    repetition_ngram: int = 4
    """Word n-gram length of the repetition check."""
    max_repeated_ngram_share: float = 0.3
    """An answer whose share of repeated n-grams is above this counts as repetitive."""

    def __post_init__(self) -> None:
        if not self.kl_backoff >= 1.0:
            raise ValueError(f"PublishConfig.kl_backoff must be >= 1, got {self.kl_backoff}")
        if self.kl_stop_share is not None and not self.kl_stop_share > 0.0:
            raise ValueError(f"PublishConfig.kl_stop_share must be > 0 (or None), got "
                             f"{self.kl_stop_share}")
        for name in ("max_empty_share", "max_truncated_share", "max_repetitive_share",
                     "degenerate_margin", "max_repeated_ngram_share"):
            if not 0.0 <= (value := getattr(self, name)) <= 1.0:
                raise ValueError(f"PublishConfig.{name} must be in [0, 1], got {value}")


@dataclass(frozen=True)
class TrainerConfig:
    """The continuous trainer."""

    group_id: str = "personalize-trainer"
    """Kafka consumer group; more processes in it split the users by partition."""
    adapter_store: str = ".cache/adapters"
    """Root of the adapter store shared with the servers."""
    state_dir: str = ".cache/trainer"
    """Journal and reward-model state of this process (derived; rebuilt from Kafka)."""
    policy_model: str = ".cache/models/SmolLM2-135M-Instruct"
    """HF directory of the served base model (the PPO policy and reference)."""
    policy_model_id: str = ""
    """Base model id written in manifests; must equal the server's (default: dir name)."""
    metrics_port: int = 9401
    """Port of the trainer's Prometheus endpoint (0 disables it)."""
    metrics_host: str = "127.0.0.1"
    """Address the metrics endpoint binds."""
    train: bool = True
    """False: only ingest (rebuild the journal), never train."""
    join_timeout_s: float = 300.0
    """Feedback whose generations have not arrived by then is dead-lettered."""
    poll_timeout_ms: int = 200
    """Longest wait of one poll."""
    torch_threads: int = 0
    """CPU threads for training (0: torch's default, one per core). On a small host shared
    with the server, 1: each parallel region of a multi-threaded trainer waits for its
    thread on the core vLLM is using (bench.trainer_threads, docs/benchmarks.md)."""
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    reward: RewardModelConfig = field(default_factory=RewardModelConfig)
    preferences: PreferenceConfig = field(default_factory=PreferenceConfig)
    online: OnlineConfig = field(default_factory=OnlineConfig)
