"""Prometheus metrics of the trainer. No metric carries a user id."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_SECONDS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_UNIT = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
REFUSAL_REASONS = ("no_step", "degenerate", "no_gain", "kl_bound")
"""Why the publish gate kept the served adapter (loop/gate.py)."""


class TrainerMetrics:
    """All trainer metrics. Labelled series whose values are known up front
    (dead letters of the consumed topics, refusal reasons, reward-model parts)
    exist from the start at 0, as in ServerMetrics."""

    def __init__(self, registry: CollectorRegistry | None = None,
                 generations_topic: str = "generations", feedback_topic: str = "feedback"
                 ) -> None:
        self.registry = registry or CollectorRegistry()
        r, p = self.registry, "personalize_trainer_"
        self.consumed = Counter(p + "records_consumed", "Records journaled from Kafka.",
                                registry=r)
        self.joined = Counter(p + "feedback_joined", "Feedback events joined with the "
                              "generation records they rate (training data).", registry=r)
        self.dead_lettered = Counter(p + "dead_lettered", "Records sent to a dead-letter topic.",
                                     ["topic", "reason"], registry=r)
        self.lag = Gauge(p + "consumer_lag", "Records behind the end, per partition.",
                         ["topic", "partition"], registry=r)
        self.pairs = Counter(p + "preference_pairs_built", "Preference pairs built.", registry=r)
        self.rm_loss = Gauge(p + "reward_model_loss", "Last reward-model training loss.",
                             ["part"], registry=r)
        self.rm_accuracy = Histogram(p + "reward_model_heldout_accuracy",
                                     "Held-out pairwise accuracy per trained user.",
                                     buckets=_UNIT, registry=r)
        self.ppo_steps = Counter(p + "ppo_steps", "PPO iterations run.", registry=r)
        self.ppo_reward = Gauge(p + "ppo_mean_reward", "Mean reward of the last PPO step.",
                                registry=r)
        self.ppo_kl = Gauge(p + "ppo_kl", "Mean KL to the reference of the last PPO step.",
                            registry=r)
        self.ppo_clipfrac = Gauge(p + "ppo_clipfrac", "Clip fraction of the last PPO step.",
                                  registry=r)
        self.ppo_kl_stops = Counter(p + "ppo_kl_stops", "Turns whose PPO stopped at the "
                                    "turn's KL limit (the adapter went back to the last "
                                    "iterate within it).", registry=r)
        self.turn_seconds = Histogram(p + "turn_duration_seconds", "One user's training turn.",
                                      buckets=_SECONDS, registry=r)
        self.published = Counter(p + "adapters_published", "Adapter versions published.",
                                 registry=r)
        self.refused = Counter(p + "adapters_refused", "Candidates not published, by reason.",
                               ["reason"], registry=r)
        self.publish_fenced = Counter(p + "publish_fenced", "Candidates refused by the store "
                                      "because their parent was no longer the latest version "
                                      "(another trainer published the user meanwhile).",
                                      registry=r)
        self.turns_interrupted = Counter(p + "turns_interrupted", "Turns stopped before "
                                         "publishing (shutdown, or the user's partition was "
                                         "revoked).", registry=r)
        self.turn_failures = Counter(p + "turn_failures", "Turns that raised; the user is "
                                     "quarantined with backoff.", registry=r)
        self.users_quarantined = Gauge(p + "users_quarantined", "Users whose turns are held "
                                       "back after a failure.", registry=r)
        self.feedback_to_publish = Histogram(p + "feedback_to_publish_seconds",
                                             "Oldest new feedback of a turn to its publish.",
                                             buckets=_SECONDS, registry=r)
        self.users_tracked = Gauge(p + "users_tracked", "Users with feedback in the journal "
                                   "(any state).", registry=r)
        self.adapters_in_memory = Gauge(p + "adapters_in_memory",
                                        "User adapters resident in the policy model.",
                                        registry=r)
        self.online_comparisons = Counter(
            p + "online_comparisons", "The served version against a comparison arm in the "
            "users' own rankings and thumbs of interleaved candidates, by arm (base, parent) "
            "and the served version's outcome (win, loss, tie).", ["arm", "outcome"],
            registry=r)
        self.online_win_rate_vs_base = Histogram(
            p + "online_win_rate_vs_base", "A user's online win rate of the served version "
            "against the base model, observed when the user's comparisons change.",
            buckets=_UNIT, registry=r)
        self.erasures = Counter(p + "erasures_applied", "User erasures carried out (state "
                                "and store files of the user deleted).", registry=r)
        self.rollbacks = Counter(p + "rollbacks", "Served versions rolled back to their parent "
                                 "after losing to it online.", registry=r)
        for arm in ("base", "parent"):
            for outcome in ("win", "loss", "tie"):
                self.online_comparisons.labels(arm, outcome)
        for topic, reason in ((generations_topic, "unparseable"),
                              (feedback_topic, "unparseable"), (feedback_topic, "unjoinable")):
            self.dead_lettered.labels(topic, reason)
        for reason in REFUSAL_REASONS:
            self.refused.labels(reason)
        for part in ("shared", "user"):
            self.rm_loss.labels(part)
