"""Prometheus: the scrape config, and the alert rules (metrics and labels the
code defines, advice in every annotation, a firing and a silent unit-test case
per rule), validated and unit-tested by promtool (Debian's `prometheus`)."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml

from tests.deploy.helpers import (
    METRIC_NAME,
    PROM,
    REPO,
    SAMPLES,
    SERVER,
    TRAINER,
    check_promql,
    family_names,
    prometheus_tool,
)


def test_prometheus_scrapes_the_default_metrics_ports() -> None:
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in cfg["scrape_configs"]}
    assert jobs == {"personalize-server": [f"server:{SERVER.metrics_port}"],
                    "personalize-trainer": [f"trainer:{TRAINER.metrics_port}"]}
    assert cfg["rule_files"] == ["alerts.yml"]



REQUIRED_ALERTS = {"ConsumerLagGrowing", "NoAdapterPublishedWhileFeedbackArrives",
                   "AdapterSwapFailures", "KafkaProduceErrors", "TrainerDown", "ServerDown",
                   "HighTimeToFirstTokenP99", "DeadLetters"}


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROM / "alerts.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def test_alerts_use_defined_metrics_and_say_what_to_do() -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= REQUIRED_ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        check_promql(rule["expr"], rule["alert"])
        for text in rule["annotations"].values():  # metrics named in the advice exist too
            check_promql(text, rule["alert"] + " annotation")
    for job in ("personalize-server", "personalize-trainer"):
        assert any(f'up{{job="{job}"}}' in r["expr"] for r in rules), job


def test_alert_unit_tests_cover_every_rule_both_ways() -> None:
    doc = yaml.safe_load((PROM / "alerts_test.yml").read_text())
    firing: set[str] = set()
    silent: set[str] = set()
    for group in doc["tests"]:
        for series in group["input_series"]:
            check_promql(series["series"], "alerts_test.yml")
        for case in group["alert_rule_test"]:
            (firing if case["exp_alerts"] else silent).add(case["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert firing == names, f"no firing case for {names - firing}"
    assert silent == names, f"no silent case for {names - silent}"



@pytest.mark.parametrize("args", [
    ("check", "config", "prometheus.yml"),
    ("check", "rules", "alerts.yml"),
    ("test", "rules", "alerts_test.yml"),
], ids=lambda a: " ".join(a[:2]))
def test_promtool(args: tuple[str, ...]) -> None:
    result = subprocess.run([prometheus_tool(), *args], cwd=PROM, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_operations_doc_lists_every_metric() -> None:
    """docs/operations.md names every metric family, and only defined ones."""
    doc = (REPO / "docs" / "operations.md").read_text()
    named, families = set(METRIC_NAME.findall(doc)), family_names()
    assert named <= set(SAMPLES) | families, f"undefined: {sorted(named - set(SAMPLES) - families)}"
    missing = {f for f in families if f not in named and f + "_total" not in named}
    assert not missing, f"not in docs/operations.md: {sorted(missing)}"
