"""Writes deploy/grafana/dashboards/personalize.json, the Grafana dashboard of the stack.

Edit the panels here, then run ``python deploy/grafana/make_dashboard.py``;
tests/deploy/test_grafana.py fails when the JSON and this script disagree, when a
query names a metric that services/server/metrics.py or trainer/metrics.py does not
define, or when a defined metric has no panel; tests/deploy/test_live_prometheus.py
runs every query on a real Prometheus scraping a live server and trainer.

Plain standard library on purpose: it runs anywhere, without the project installed.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards" / "personalize.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "[$__rate_interval]"


def quantiles(metric: str, by: str = "", qs: tuple[float, ...] = (0.5, 0.99)) -> list[dict]:
    """p50/p99 (by default) of a histogram, optionally split by labels."""
    grouping = f"le, {by}" if by else "le"
    suffix = "".join(f" {{{{{label.strip()}}}}}" for label in by.split(",")) if by else ""
    return [{"expr": f"histogram_quantile({q}, sum by ({grouping}) "
                     f"(rate({metric}_bucket{RATE})))",
             "legendFormat": f"p{round(q * 100)}{suffix}"} for q in qs]


def rate(metric: str, by: str = "", legend: str = "") -> list[dict]:
    """Per-second rate of a counter (``metric`` without _total), summed by ``by``."""
    grouping = f" by ({by})" if by else ""
    default = " ".join(f"{{{{{label.strip()}}}}}" for label in by.split(",")) if by else "rate"
    return [{"expr": f"sum{grouping} (rate({metric}_total{RATE}))",
             "legendFormat": legend or default}]


def gauge(metric: str, by: str = "", agg: str = "sum", legend: str = "") -> list[dict]:
    grouping = f" by ({by})" if by else ""
    default = " ".join(f"{{{{{label.strip()}}}}}" for label in by.split(",")) if by else agg
    return [{"expr": f"{agg}{grouping} ({metric})", "legendFormat": legend or default}]


S, T = "personalize_server_", "personalize_trainer_"

# (row title, [(panel title, unit, description, targets)])
ROWS: list[tuple[str, list[tuple[str, str, str, list[dict]]]]] = [
    ("Serving", [
        ("Calls by API, method and code", "reqps", "All replicas, gRPC and the "
         "OpenAI-compatible HTTP API (api label); codes other than OK are mapped from domain "
         "errors, named as in gRPC on both APIs (docs/api.md).",
         rate(S + "requests", "api, method, code")),
        ("Call latency", "s", "Whole-call latency by API and method (a Generate call lasts "
         "until its stream ends).", quantiles(S + "request_duration_seconds", "api, method")),
        ("Time to first token", "s", "Request to first streamed token (HighTimeToFirstTokenP99 "
         "alerts on p99 > 5s).", quantiles(S + "time_to_first_token_seconds",
                                           qs=(0.5, 0.9, 0.99))),
        ("Inter-token latency", "s", "Time between streamed tokens of one candidate.",
         quantiles(S + "inter_token_latency_seconds")),
        ("Generated tokens", "short", "Completion tokens per second, base model vs personal "
         "adapters.", rate(S + "generated_tokens", "adapter")),
        ("Running streams", "short", "Generate calls in flight (max_concurrent_streams "
         "per replica).", gauge(S + "running_streams", "instance")),
        ("Engine queue", "short", "Engine requests (one per candidate), all replicas: "
         "waiting = submitted without output yet, running = streaming tokens.",
         gauge(S + "engine_requests", "state")),
        ("LoRA cache", "reqps", "Generate calls on a personal adapter: hit = the version "
         "was loaded in the engine, miss = read from the store first (more users than "
         "ENGINE_MAX_CPU_LORAS).", rate(S + "lora_cache_requests", "result")),
        ("Active adapters", "short", "Adapter versions routed to or still in use, per "
         "replica.", gauge(S + "active_adapters", "instance")),
        ("Adapter loads", "ops", "New adapter versions loaded, by result.",
         rate(S + "adapter_loads", "result")),
        ("Adapter swap duration", "s", "Verify + load time of a new adapter version.",
         quantiles(S + "adapter_swap_duration_seconds")),
        ("Adapter refusals", "ops", "Versions refused by reason; users keep their last "
         "good adapter (AdapterSwapFailures).", rate(S + "adapter_refusals", "reason")),
    ]),
    ("Feedback", [
        ("Feedback calls", "reqps", "SubmitFeedback by result; reason is the kind when "
         "accepted and the error when rejected.", rate(S + "feedback", "result, reason")),
        ("Preference pairs built", "ops", "Pairs the trainer derived from rankings and "
         "thumbs.", rate(T + "preference_pairs_built")),
        ("Feedback joined", "ops", "Feedback events joined with the generations they "
         "rate (training data), all trainers.", rate(T + "feedback_joined")),
        ("Users with feedback", "short", "Users with feedback in the trainers' journals.",
         gauge(T + "users_tracked", "instance")),
        ("Feedback to publish", "s", "Oldest new feedback of a turn to its adapter's "
         "publication.", quantiles(T + "feedback_to_publish_seconds")),
    ]),
    ("Training", [
        ("PPO iterations", "ops", "PPO iterations per second, all trainers.",
         rate(T + "ppo_steps")),
        ("PPO mean reward", "short", "Mean reward of the last PPO step, per trainer.",
         gauge(T + "ppo_mean_reward", "instance")),
        ("PPO KL to reference", "short", "Mean KL of the last PPO step, per trainer.",
         gauge(T + "ppo_kl", "instance")),
        ("PPO clip fraction", "percentunit", "Clip fraction of the last PPO step.",
         gauge(T + "ppo_clipfrac", "instance")),
        ("Reward-model loss", "short", "Last training loss, shared head and user head.",
         gauge(T + "reward_model_loss", "instance, part", "max")),
        ("Reward-model held-out accuracy", "percentunit", "Pairwise accuracy on held-out "
         "pairs per trained user: mean and median.",
         [{"expr": f"sum(rate({T}reward_model_heldout_accuracy_sum{RATE})) / "
                   f"sum(rate({T}reward_model_heldout_accuracy_count{RATE}))",
           "legendFormat": "mean"},
          *quantiles(T + "reward_model_heldout_accuracy", qs=(0.5,))]),
        ("Turn duration", "s", "One user's training turn.",
         quantiles(T + "turn_duration_seconds")),
        ("Adapters published and refused", "ops", "Publish-gate outcomes "
         "(NoAdapterPublishedWhileFeedbackArrives), and turns whose PPO stopped early at "
         "the turn's KL limit.",
         rate(T + "adapters_published", legend="published")
         + rate(T + "adapters_refused", "reason", "refused {{reason}}")
         + rate(T + "ppo_kl_stops", legend="PPO stopped at the KL limit")),
        ("Adapters in memory", "short", "User adapters resident in each trainer's policy "
         "model.", gauge(T + "adapters_in_memory", "instance")),
        ("Turns failed, interrupted, fenced", "ops", "Turns that raised (TrainerTurnsFailing), "
         "turns stopped by shutdown or a revoked partition, and publishes refused because "
         "another trainer published the user meanwhile.",
         rate(T + "turn_failures", legend="failed")
         + rate(T + "turns_interrupted", legend="interrupted")
         + rate(T + "publish_fenced", legend="fenced")),
        ("Users quarantined", "short", "Users held back with backoff after a failed turn, "
         "per trainer.", gauge(T + "users_quarantined", "instance")),
    ]),
    ("Online evaluation", [
        ("Comparison candidates", "ops", "Candidates the servers answered from a comparison "
         "arm (base model or the served version's parent) instead of the user's adapter "
         "(comparison_rate), by arm.", rate(S + "comparison_candidates", "arm")),
        ("Online comparisons", "ops", "The served version against a comparison arm in users' "
         "own rankings and thumbs of interleaved candidates, by arm and the served "
         "version's outcome.", rate(T + "online_comparisons", "arm, outcome")),
        ("Online win rate vs base", "percentunit", "Users' online win rates of the served "
         "version against the base model (quantiles), and the share of them at 40% or less "
         "(ServedAdaptersLosingToBase).",
         [*quantiles(T + "online_win_rate_vs_base", qs=(0.1, 0.5, 0.9)),
          {"expr": f'sum(rate({T}online_win_rate_vs_base_bucket{{le="0.4"}}{RATE})) / '
                   f"sum(rate({T}online_win_rate_vs_base_count{RATE}))",
           "legendFormat": "share losing"}]),
        ("Rollbacks and erasures", "ops", "Served versions rolled back to their parent after "
         "losing to it online; users whose data a trainer erased (docs/operations.md"
         "#erasing-a-user).", [*rate(T + "rollbacks", legend="rolled back"),
                                *rate(T + "erasures_applied", legend="erased")]),
    ]),
    ("Kafka", [
        ("Produce latency", "s", "Time to a broker acknowledgement, by topic (p99).",
         quantiles(S + "kafka_produce_duration_seconds", "topic", qs=(0.99,))),
        ("Produce errors", "ops", "Records the broker did not acknowledge "
         "(KafkaProduceErrors).", rate(S + "kafka_produce_errors", "topic")),
        ("Consumer lag", "short", "Records behind the end per topic and partition "
         "(ConsumerLagGrowing).", gauge(T + "consumer_lag", "topic, partition", "max")),
        ("Records consumed", "ops", "Records journaled from Kafka, per trainer.",
         rate(T + "records_consumed", "instance")),
        ("Dead letters", "ops", "Records sent to a dead-letter topic (DeadLetters).",
         rate(T + "dead_lettered", "topic, reason")),
    ]),
]


def build() -> dict:
    panels: list[dict] = []
    pid, y = 1, 0
    for title, row in ROWS:
        panels.append({"type": "row", "title": title, "id": pid, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid, y = pid + 1, y + 1
        for i, (ptitle, unit, desc, targets) in enumerate(row):
            panels.append({
                "type": "timeseries", "title": ptitle, "description": desc, "id": pid,
                "datasource": DS,
                "gridPos": {"h": 8, "w": 8, "x": (i % 3) * 8, "y": y + (i // 3) * 8},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"},
                            "tooltip": {"mode": "multi"}},
                "targets": [{"refId": chr(ord("A") + j), "datasource": DS, **t}
                            for j, t in enumerate(targets)],
            })
            pid += 1
        y += ((len(row) + 2) // 3) * 8
    return {
        "uid": "personalize",
        "title": "personalize",
        "description": "Online RLHF personalization: serving, feedback, training, Kafka.",
        "tags": ["personalize"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "templating": {"list": [{
            "name": "datasource", "label": "Data source", "type": "datasource",
            "query": "prometheus", "current": {}, "hide": 0, "refresh": 1,
        }]},
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render())
    print(f"wrote {OUT}")
