"""Every deploy/ file parses, and every PERSONALIZE_* setting in the Compose,
Kubernetes and Docker files is a real field of ServerConfig / TrainerConfig
(derived like services.contract.config.from_mapping) whose value parses as its type.
Fast, no network, no Docker."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from services.contract.config import from_mapping
from tests.deploy.helpers import (
    DASHBOARD,
    DEPLOY,
    DOCKER,
    PREFIXES,
    REPO,
    VALID_ENV,
    check_env_values,
    compose,
    configmap_env,
    dockerfile_env,
    dotenv,
    load_yaml_all,
    secret_data,
)

ENV_NAME = re.compile(r"\bPERSONALIZE_[A-Z0-9_]*[A-Z0-9]\b")


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    assert load_yaml_all(path), f"{path} is empty"


def test_json_parses() -> None:
    files = sorted(DEPLOY.rglob("*.json"))
    assert DASHBOARD in files
    for path in files:
        json.loads(path.read_text())


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
    secret = secret_data("personalize-response-keys")
    check_env_values(secret, "secret")
    # the response keys (env) and the auth secrets (a mounted file, see test_k8s.py)
    assert set(secret) == {"PERSONALIZE_SERVER_RESPONSE_KEYS", "auth-secrets"}
    assert not any(secret.values()), "placeholders only: real secrets are set out of band"


def test_compose_dotenv_values_build_the_configs() -> None:
    env = dotenv()
    check_env_values(env, "compose .env")
    assert env["COMPOSE_PROFILES"] == "cpu"
    assert env["PERSONALIZE_SERVER_AUTH_SECRETS"] == "", "never commit a real secret"


def test_dockerfile_env_values_build_the_configs() -> None:
    for name in ("server", "trainer"):
        check_env_values(dockerfile_env(DOCKER / f"Dockerfile.{name}"), f"Dockerfile.{name}")
