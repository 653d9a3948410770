"""What the deploy/ checks share: paths, file readers, the config-field names the
files may use, and the metric names and labels the code defines."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from services.contract.config import _field_type, from_mapping
from services.server.config import ServerConfig
from services.server.metrics import ServerMetrics
from trainer.config import TrainerConfig
from trainer.metrics import TrainerMetrics

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PROM = DEPLOY / "prometheus"
COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
COMPOSE_DOTENV = DEPLOY / "compose" / ".env"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "personalize.json"
K8S = DEPLOY / "k8s"
DOCKER = DEPLOY / "docker"

SERVER, TRAINER = ServerConfig(), TrainerConfig()
PREFIXES = {"PERSONALIZE_SERVER_": ServerConfig, "PERSONALIZE_TRAINER_": TrainerConfig}
METRIC_NAME = re.compile(r"\bpersonalize_(?:server|trainer)_[a-z0-9_]+\b")
# Labels Prometheus adds (job, instance) or histograms carry (le).
TARGET_LABELS = {"job", "instance", "le"}


# --- files ------------------------------------------------------------------------


def load_yaml_all(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def dockerfile_env(path: Path) -> dict[str, str]:
    """ENV key=value pairs of a Dockerfile (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(re.findall(r"(\w+)=(\S+)", line))
    return env


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def dotenv(path: Path = COMPOSE_DOTENV) -> dict[str, str]:
    """NAME=value lines of a Compose .env file (comments and blank lines skipped)."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def k8s_docs() -> list[dict[str, Any]]:
    """The manifests (kustomization.yaml is kustomize's own file, not a resource)."""
    return [d for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml"
            for d in load_yaml_all(p)]


def k8s(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def configmap_env(name: str) -> dict[str, str]:
    return dict(k8s("ConfigMap", name)["data"])


def secret_data(name: str) -> dict[str, str]:
    """The keys (and values) of a Secret of the manifests: stringData and data."""
    secret = k8s("Secret", name)
    return {**(secret.get("data") or {}), **(secret.get("stringData") or {})}


def container_env(container: dict[str, Any]) -> dict[str, str | None]:
    """The environment a container gets from its ConfigMaps (envFrom) and its env
    list; a valueFrom entry reads as None."""
    env: dict[str, str | None] = {}
    for ref in container.get("envFrom", []):
        if "configMapRef" in ref:
            env.update(configmap_env(ref["configMapRef"]["name"]))
    for var in container.get("env", []):
        env[var["name"]] = var.get("value")
    return env


def secret_file(spec: dict[str, Any], container: dict[str, Any], path: str) -> tuple[str, str]:
    """(Secret name, key) of the file ``path`` in ``container``: it must lie in a
    read-only volume mount of a non-optional secret volume of the pod ``spec``."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = [m for m in container.get("volumeMounts", [])
              if path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert len(mounts) == 1, f"{container['name']}: {path} is in no volume mount"
    (mount,) = mounts
    assert mount.get("readOnly"), f"{container['name']}: mount {mount['name']} is writable"
    source = volumes[mount["name"]].get("secret")
    assert source, f"{container['name']}: {path} is not in a Secret volume"
    assert not source.get("optional"), f"volume {mount['name']}: a missing Secret must " \
        "stop the pod, not leave the file out"
    name = path[len(mount["mountPath"].rstrip("/")) + 1:]
    items = {item["path"]: item["key"] for item in source.get("items", [])}
    if items:
        assert name in items, f"{path}: no item of Secret {source['secretName']} is {name}"
    return source["secretName"], items.get(name, name)


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_targets(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL expression) of every query of the dashboard."""
    return [(p["title"], t["expr"]) for p in board["panels"] for t in p.get("targets", [])]


def prometheus_tool(name: str = "promtool") -> str:
    """Path of ``promtool`` or ``prometheus``, both from Debian's `prometheus`."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH: install Debian's `prometheus` package "
                    "(apt-get install -y prometheus), which provides it")
    return path


# --- configuration fields -----------------------------------------------------------


def env_fields(cls: type, prefix: str) -> dict[str, tuple[Any, bool]]:
    """Every environment name ``from_mapping(cls, env, prefix)`` reads, with its type."""
    names: dict[str, tuple[Any, bool]] = {}
    for f in dataclasses.fields(cls):
        kind, optional = _field_type(cls, f.name)
        key = f"{prefix}{f.name.upper()}"
        if dataclasses.is_dataclass(kind):
            names.update(env_fields(kind, key + "_"))
        else:
            names[key] = (kind, optional)
    return names


VALID_ENV = {**env_fields(ServerConfig, "PERSONALIZE_SERVER_"),
             **env_fields(TrainerConfig, "PERSONALIZE_TRAINER_")}


def check_env_values(env: dict[str, Any], where: str) -> None:
    """Names are config fields, and the values build the config (types, validation)."""
    for name in env:
        if name.startswith("PERSONALIZE_"):
            assert name in VALID_ENV, f"{where}: {name} is not a config field"
    for prefix, cls in PREFIXES.items():
        values = {k: str(v) for k, v in env.items() if k.startswith(prefix)}
        if values:
            # ${VAR:-default} interpolations are strings for str fields; skip others
            values = {k: v for k, v in values.items()
                      if not (v.startswith("${") and VALID_ENV[k][0] is not str)}
            from_mapping(cls, values, prefix)  # raises on a value of the wrong type


# --- metrics ------------------------------------------------------------------------


def sample_names_and_labels() -> dict[str, set[str]]:
    """Sample name -> label names, read from the registries' collected samples (each
    labelled metric is given one child first, so it has samples to collect)."""
    out: dict[str, set[str]] = {}
    for metrics in (ServerMetrics(), TrainerMetrics()):
        for metric in vars(metrics).values():
            if isinstance(metric, MetricWrapperBase) and metric._labelnames:
                metric.labels(*["x"] * len(metric._labelnames))
        for family in metrics.registry.collect():
            for sample in family.samples:
                out.setdefault(sample.name, set()).update(sample.labels)
    return out


SAMPLES = sample_names_and_labels()


def family_names() -> set[str]:
    return {family.name for m in (ServerMetrics(), TrainerMetrics())
            for family in m.registry.collect()}


def grouping_labels(expr: str) -> list[str]:
    """Label names of every by/without/on/ignoring clause of ``expr``."""
    return [label for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr)
            for label in filter(None, (x.strip() for x in group.split(",")))]


def check_promql(expr: str, where: str) -> set[str]:
    """Metric names and label names of ``expr`` are defined; returns the names used."""
    names = set(METRIC_NAME.findall(expr))
    for name in names:
        assert name in SAMPLES, f"{where}: {name} is not a metric of ServerMetrics/TrainerMetrics"
    known = set(TARGET_LABELS).union(*(SAMPLES[n] for n in names)) if names else TARGET_LABELS
    for name, matchers in re.findall(r"(personalize_\w+)\{([^}]*)\}", expr):
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
            assert label in SAMPLES[name] | TARGET_LABELS, f"{where}: {name} has no label {label}"
    for label in grouping_labels(expr):
        assert label in known, f"{where}: label {label} is not on {sorted(names)}"
    return names
