"""The images and the Compose file: bind addresses, ports, the shared adapter
store, the topics the topic service creates, and the Prometheus and Grafana
mounts. Fast, no Docker."""

from __future__ import annotations

import re

import yaml

from services.contract.config import KafkaConfig
from tests.deploy.helpers import (
    COMPOSE,
    COMPOSE_DOTENV,
    DEPLOY,
    DOCKER,
    SERVER,
    TRAINER,
    compose,
    configmap_env,
    dockerfile_env,
    dotenv,
)


def test_images_bind_all_interfaces_on_the_default_ports() -> None:
    server = dockerfile_env(DOCKER / "Dockerfile.server")
    trainer = dockerfile_env(DOCKER / "Dockerfile.trainer")
    assert server["PERSONALIZE_SERVER_HOST"] == "0.0.0.0"
    assert server["PERSONALIZE_SERVER_METRICS_HOST"] == "0.0.0.0"
    assert trainer["PERSONALIZE_TRAINER_METRICS_HOST"] == "0.0.0.0"
    assert server["PERSONALIZE_SERVER_PORT"] == str(SERVER.port)
    assert server["PERSONALIZE_SERVER_HTTP_PORT"] == str(SERVER.http_port)
    assert server["PERSONALIZE_SERVER_METRICS_PORT"] == str(SERVER.metrics_port)
    assert trainer["PERSONALIZE_TRAINER_METRICS_PORT"] == str(TRAINER.metrics_port)
    text = (DOCKER / "Dockerfile.server").read_text()
    assert f"EXPOSE {SERVER.port} {SERVER.http_port} {SERVER.metrics_port}" in text
    assert f"127.0.0.1:{SERVER.port}" in text  # the HEALTHCHECK
    assert f"EXPOSE {TRAINER.metrics_port}" in (DOCKER / "Dockerfile.trainer").read_text()
    for dockerfile in (DOCKER / "Dockerfile.server", DOCKER / "Dockerfile.trainer"):
        body = dockerfile.read_text()
        assert "FROM python:3.11-slim" in body
        # the package build generates the protobuf code (setup.py), no manual protoc step
        assert "COPY pyproject.toml setup.py README.md ./" in body
        assert "pip install --no-deps ." in body
        assert "services.devstack.prepare_model --out" in body
        assert "COPY services/contract ./services/contract" in body
        assert "COPY services ./services" not in body  # only what the service needs
    server_body = (DOCKER / "Dockerfile.server").read_text()
    trainer_body = (DOCKER / "Dockerfile.trainer").read_text()
    assert "COPY services/server ./services/server" in server_body
    assert "COPY trainer" not in server_body and "services/client" not in server_body
    assert "COPY trainer ./trainer" in trainer_body
    assert "services/server" not in trainer_body and "services/client" not in trainer_body


def test_every_port_setting_is_the_default() -> None:
    defaults = {"PERSONALIZE_SERVER_PORT": SERVER.port,
                "PERSONALIZE_SERVER_HTTP_PORT": SERVER.http_port,
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
        assert set(ports) == {f"{p}:{p}" for p in (SERVER.port, SERVER.http_port,
                                                    SERVER.metrics_port)}
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


def test_compose_auth_secrets_come_from_the_environment() -> None:
    """Both servers take PERSONALIZE_SERVER_AUTH_SECRETS from the shell or .env
    (auth on once it is set), with no default in the file: no committed secret."""
    name = "PERSONALIZE_SERVER_AUTH_SECRETS"
    services = compose()["services"]
    for service in ("server", "server-gpu"):
        assert services[service]["environment"][name] == f"${{{name}:-}}", service
        assert "PERSONALIZE_SERVER_AUTH_SECRETS_FILE" not in services[service]["environment"]
    assert name not in services["trainer"]["environment"]
    assert name in dotenv()
    for path in (COMPOSE, COMPOSE_DOTENV):
        assert "openssl rand -hex 32" in path.read_text(), f"{path.name}: how to make one"
