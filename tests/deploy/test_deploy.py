"""Static checks of deploy/: the files parse, and they agree with the code.

- every YAML / JSON file under deploy/ parses;
- every PERSONALIZE_* name in the Compose, Kubernetes and Docker files is a real
  field of ServerConfig / TrainerConfig (derived like services.config.from_mapping),
  and the values given parse as that field's type;
- the ports, topics, partitions and adapter-store paths agree with the config
  defaults and between server and trainer;
- every metric (and label) used by alerts.yml, alerts_test.yml and the dashboard is
  defined by ServerMetrics / TrainerMetrics, and every defined metric has a panel;
- the dashboard equals what deploy/grafana/make_dashboard.py generates;
- promtool (Debian's `prometheus` package) validates prometheus.yml and alerts.yml
  and passes alerts_test.yml.

Fast, no network, no Docker.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from services.config import KafkaConfig, ServerConfig, _field_type, from_mapping
from services.metrics import ServerMetrics
from trainer.config import TrainerConfig
from trainer.metrics import TrainerMetrics

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PROM = DEPLOY / "prometheus"
COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "personalize.json"
K8S = DEPLOY / "k8s"
DOCKER = DEPLOY / "docker"

SERVER, TRAINER = ServerConfig(), TrainerConfig()
PREFIXES = {"PERSONALIZE_SERVER_": ServerConfig, "PERSONALIZE_TRAINER_": TrainerConfig}
ENV_NAME = re.compile(r"\bPERSONALIZE_[A-Z0-9_]*[A-Z0-9]\b")
METRIC_NAME = re.compile(r"\bpersonalize_(?:server|trainer)_[a-z0-9_]+\b")
# Labels Prometheus adds (job, instance) or histograms carry (le).
TARGET_LABELS = {"job", "instance", "le"}


# --- helpers --------------------------------------------------------------------


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))


def load_yaml_all(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


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


def check_promql(expr: str, where: str) -> set[str]:
    """Metric names and label names of ``expr`` are defined; returns the names used."""
    names = set(METRIC_NAME.findall(expr))
    for name in names:
        assert name in SAMPLES, f"{where}: {name} is not a metric of ServerMetrics/TrainerMetrics"
    known = set(TARGET_LABELS).union(*(SAMPLES[n] for n in names)) if names else TARGET_LABELS
    for name, matchers in re.findall(r"(personalize_\w+)\{([^}]*)\}", expr):
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
            assert label in SAMPLES[name] | TARGET_LABELS, f"{where}: {name} has no label {label}"
    for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        for label in filter(None, (x.strip() for x in group.split(","))):
            assert label in known, f"{where}: label {label} is not on {sorted(names)}"
    return names


def dashboard_targets(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]


# --- every file parses ------------------------------------------------------------


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    assert load_yaml_all(path), f"{path} is empty"


def test_json_parses() -> None:
    files = sorted(DEPLOY.rglob("*.json"))
    assert DASHBOARD in files
    for path in files:
        json.loads(path.read_text())


# --- environment names and values ---------------------------------------------------


def test_env_field_derivation_matches_from_mapping() -> None:
    """Each derived name is one from_mapping reads: a string field takes a marker
    value, any other field rejects an unparsable one, naming the variable."""
    assert "PERSONALIZE_SERVER_KAFKA_BOOTSTRAP_SERVERS" in VALID_ENV
    assert "PERSONALIZE_SERVER_ENGINE_MODEL" in VALID_ENV
    assert "PERSONALIZE_TRAINER_PPO_MAX_STEPS" in VALID_ENV
    for name, (kind, _) in VALID_ENV.items():
        prefix = next(p for p in PREFIXES if name.startswith(p))
        cls = PREFIXES[prefix]
        if kind is str or kind is tuple or getattr(kind, "__origin__", None) is tuple:
            try:
                cfg = from_mapping(cls, {name: "marker"}, prefix)
            except ValueError:  # read, and refused by the field's own validation
                continue
            assert "marker" in json.dumps(dataclasses.asdict(cfg)), name
        else:
            with pytest.raises(ValueError, match=name):
                from_mapping(cls, {name: "not-a-value"}, prefix)


def test_every_personalize_name_under_deploy_is_a_config_field() -> None:
    checked = 0
    for path in sorted(DEPLOY.rglob("*")):
        if not path.is_file() or path.suffix == ".json":
            continue
        for name in ENV_NAME.findall(path.read_text()):
            assert name in VALID_ENV, f"{path.relative_to(REPO)}: {name} is not a config field"
            checked += 1
    assert checked > 20


def test_compose_env_values_build_the_configs() -> None:
    services = compose()["services"]
    for name in ("server", "server-gpu", "trainer"):
        check_env_values(services[name]["environment"], f"compose {name}")


def test_k8s_env_values_build_the_configs() -> None:
    check_env_values(configmap_env("personalize-server-env"), "configmap server")
    check_env_values(configmap_env("personalize-trainer-env"), "configmap trainer")
    secret = k8s("Secret", "personalize-response-keys")["stringData"]
    check_env_values(secret, "secret")
    assert set(secret) == {"PERSONALIZE_SERVER_RESPONSE_KEYS"}


def test_dockerfile_env_values_build_the_configs() -> None:
    for name in ("server", "trainer"):
        check_env_values(dockerfile_env(DOCKER / f"Dockerfile.{name}"), f"Dockerfile.{name}")


# --- ports, binds, paths, topics ----------------------------------------------------


def test_images_bind_all_interfaces_on_the_default_ports() -> None:
    server = dockerfile_env(DOCKER / "Dockerfile.server")
    trainer = dockerfile_env(DOCKER / "Dockerfile.trainer")
    assert server["PERSONALIZE_SERVER_HOST"] == "0.0.0.0"
    assert server["PERSONALIZE_SERVER_METRICS_HOST"] == "0.0.0.0"
    assert trainer["PERSONALIZE_TRAINER_METRICS_HOST"] == "0.0.0.0"
    assert server["PERSONALIZE_SERVER_PORT"] == str(SERVER.port)
    assert server["PERSONALIZE_SERVER_METRICS_PORT"] == str(SERVER.metrics_port)
    assert trainer["PERSONALIZE_TRAINER_METRICS_PORT"] == str(TRAINER.metrics_port)
    text = (DOCKER / "Dockerfile.server").read_text()
    assert f"EXPOSE {SERVER.port} {SERVER.metrics_port}" in text
    assert f"127.0.0.1:{SERVER.port}" in text  # the HEALTHCHECK
    assert f"EXPOSE {TRAINER.metrics_port}" in (DOCKER / "Dockerfile.trainer").read_text()
    for dockerfile in (DOCKER / "Dockerfile.server", DOCKER / "Dockerfile.trainer"):
        body = dockerfile.read_text()
        assert "FROM python:3.11-slim" in body
        assert "grpc_tools.protoc -Iproto --python_out=proto --pyi_out=proto" in body
        assert "services.prepare_model --out" in body


def test_every_port_setting_is_the_default() -> None:
    defaults = {"PERSONALIZE_SERVER_PORT": SERVER.port,
                "PERSONALIZE_SERVER_METRICS_PORT": SERVER.metrics_port,
                "PERSONALIZE_TRAINER_METRICS_PORT": TRAINER.metrics_port}
    envs = [dockerfile_env(DOCKER / "Dockerfile.server"),
            dockerfile_env(DOCKER / "Dockerfile.trainer"),
            configmap_env("personalize-server-env"), configmap_env("personalize-trainer-env"),
            *(s.get("environment", {}) for s in compose()["services"].values())]
    for env in envs:
        for key, value in env.items():
            if key in defaults:
                assert str(value) == str(defaults[key]), key


def test_prometheus_scrapes_the_default_metrics_ports() -> None:
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in cfg["scrape_configs"]}
    assert jobs == {"personalize-server": [f"server:{SERVER.metrics_port}"],
                    "personalize-trainer": [f"trainer:{TRAINER.metrics_port}"]}
    assert cfg["rule_files"] == ["alerts.yml"]


def test_compose_ports_volumes_and_topics() -> None:
    doc = compose()
    services = doc["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    store = dockerfile_env(DOCKER / "Dockerfile.server")["PERSONALIZE_SERVER_ADAPTER_STORE"]
    assert dockerfile_env(DOCKER / "Dockerfile.trainer")["PERSONALIZE_TRAINER_ADAPTER_STORE"] \
        == store
    for name in ("server", "server-gpu", "trainer"):
        svc = services[name]
        assert f"adapters:{store}" in svc["volumes"], f"{name} must mount the shared store"
        assert svc["depends_on"]["topics"]["condition"] == "service_completed_successfully"
        assert "bootstrap_servers".upper() in " ".join(svc["environment"])
    assert "adapters" in doc["volumes"]
    for name in ("server", "server-gpu"):
        ports = services[name]["ports"]
        assert f"{SERVER.port}:{SERVER.port}" in ports
        assert f"{SERVER.metrics_port}:{SERVER.metrics_port}" in ports
        assert services[name]["environment"]["PERSONALIZE_SERVER_RESPONSE_KEYS"]
    assert f"{TRAINER.metrics_port}:{TRAINER.metrics_port}" in services["trainer"]["ports"]
    assert services["server"]["profiles"] == ["cpu"]
    assert services["server-gpu"]["profiles"] == ["gpu"]
    assert services["server-gpu"]["build"]["args"]["EXTRAS"].startswith("gpu")
    assert "server" in services["server-gpu"]["networks"]["default"]["aliases"]
    # the topic service creates exactly the six topics of KafkaConfig, 3 partitions each
    k = KafkaConfig()
    script = services["topics"]["command"][0]
    created = set(re.findall(r"^\s*create\s+(\S+)", script, re.M))
    base = {k.generations_topic, k.feedback_topic, k.adapter_updates_topic}
    assert created == base | {t + k.dlq_suffix for t in base}
    assert f"--partitions {k.partitions}" in script
    # Prometheus and Grafana see the files of this repository
    assert "../prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    provider = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/personalize.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert f"../grafana/dashboards:{path}:ro" in services["grafana"]["volumes"]


def test_k8s_manifests() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in k8s_docs()}
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in K8S.glob("*.yaml")
                                    if p.name != "kustomization.yaml")
    assert ("Namespace", "personalize") in kinds
    assert k8s("PersistentVolumeClaim", "personalize-adapters")["spec"]["accessModes"] == [
        "ReadWriteMany"]
    server_env = configmap_env("personalize-server-env")
    trainer_env = configmap_env("personalize-trainer-env")
    store = server_env["PERSONALIZE_SERVER_ADAPTER_STORE"]
    assert trainer_env["PERSONALIZE_TRAINER_ADAPTER_STORE"] == store
    assert server_env["PERSONALIZE_SERVER_HOST"] == "0.0.0.0"
    assert server_env["PERSONALIZE_SERVER_METRICS_HOST"] == "0.0.0.0"
    assert trainer_env["PERSONALIZE_TRAINER_METRICS_HOST"] == "0.0.0.0"

    server = k8s("Deployment", "personalize-server")["spec"]["template"]["spec"]
    (container,) = server["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": SERVER.port, "metrics": SERVER.metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == SERVER.port, probe
    assert container["resources"]["requests"]
    assert server["terminationGracePeriodSeconds"] > SERVER.drain_timeout_s
    refs = {next(iter(r.values()))["name"] for r in container["envFrom"]}
    assert refs == {"personalize-server-env", "personalize-response-keys"}

    trainer = k8s("Deployment", "personalize-trainer")["spec"]["template"]["spec"]
    (tcontainer,) = trainer["containers"]
    assert [p["containerPort"] for p in tcontainer["ports"]] == [TRAINER.metrics_port]

    for spec, c in ((server, container), (trainer, tcontainer)):
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert mounts["adapters"] == store
        claim = {v["name"]: v for v in spec["volumes"]}["adapters"]
        assert claim["persistentVolumeClaim"]["claimName"] == "personalize-adapters"

    service = k8s("Service", "personalize-server")["spec"]
    assert {p["name"]: p["port"] for p in service["ports"]} == {
        "grpc": SERVER.port, "metrics": SERVER.metrics_port}
    assert {p["port"] for p in k8s("Service", "personalize-trainer-metrics")["spec"]["ports"]} \
        == {TRAINER.metrics_port}


# --- metrics: alerts and dashboard ----------------------------------------------------

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


def test_dashboard_structure_and_generator() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "personalize"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Serving", "Feedback", "Training", "Kafka"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
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
    dashboard = json.loads(DASHBOARD.read_text())
    used: set[str] = set()
    for title, expr in dashboard_targets(dashboard):
        used |= check_promql(expr, f"panel {title!r}")
    for family in family_names():
        assert any(name == family or name.startswith(family + "_") for name in used), \
            f"no dashboard panel for {family}"


# --- promtool -------------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ("check", "config", "prometheus.yml"),
    ("check", "rules", "alerts.yml"),
    ("test", "rules", "alerts_test.yml"),
], ids=lambda a: " ".join(a[:2]))
def test_promtool(args: tuple[str, ...]) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not on PATH: install Debian's `prometheus` package "
                    "(apt-get install -y prometheus), which provides it")
    result = subprocess.run([promtool, *args], cwd=PROM, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
