"""The Grafana dashboard: structure, equal to what make_dashboard.py generates,
every query on metrics and labels the code defines, a panel for every metric."""

from __future__ import annotations

import importlib.util

import yaml

from tests.deploy.helpers import (
    DASHBOARD,
    DEPLOY,
    check_promql,
    dashboard,
    dashboard_targets,
    family_names,
)


def test_dashboard_structure_and_generator() -> None:
    board = dashboard()
    assert board["uid"] == "personalize"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert rows == ["Serving", "Feedback", "Training", "Online evaluation", "Kafka"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    spec = importlib.util.spec_from_file_location(
        "make_dashboard", DEPLOY / "grafana" / "make_dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert DASHBOARD.read_text() == module.render(), \
        "dashboard JSON is stale: run python deploy/grafana/make_dashboard.py"
    provisioning = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert provisioning["datasources"][0]["type"] == "prometheus"


def test_dashboard_uses_defined_metrics_and_covers_all_of_them() -> None:
    used: set[str] = set()
    for title, expr in dashboard_targets(dashboard()):
        used |= check_promql(expr, f"panel {title!r}")
    for family in family_names():
        assert any(name == family or name.startswith(family + "_") for name in used), \
            f"no dashboard panel for {family}"
