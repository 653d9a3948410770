"""The Kubernetes manifests: kustomization lists them all; ports, probes, the
ReadWriteMany adapter store mounted at the same path in server and trainer;
authentication on, its secrets a file from the Secret. Fast, no cluster."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from services.client import cli
from tests.deploy.helpers import (
    K8S,
    SERVER,
    TRAINER,
    configmap_env,
    container_env,
    k8s,
    k8s_docs,
    secret_data,
    secret_file,
)

SECRETS_FILE = "PERSONALIZE_SERVER_AUTH_SECRETS_FILE"


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
    assert ports == {"grpc": SERVER.port, "http": SERVER.http_port,
                     "metrics": SERVER.metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == SERVER.port, probe
    assert container["resources"]["requests"]
    assert server["terminationGracePeriodSeconds"] > SERVER.drain_timeout_s
    refs = {next(iter(r.values()))["name"] for r in container["envFrom"]}
    assert refs == {"personalize-server-env"}
    (keys,) = [e for e in container["env"] if e["name"] == "PERSONALIZE_SERVER_RESPONSE_KEYS"]
    ref = keys["valueFrom"]["secretKeyRef"]
    assert ref["key"] == keys["name"] and ref["key"] in secret_data(ref["name"])

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
        "grpc": SERVER.port, "http": SERVER.http_port, "metrics": SERVER.metrics_port}
    assert {p["port"] for p in k8s("Service", "personalize-trainer-metrics")["spec"]["ports"]} \
        == {TRAINER.metrics_port}


def server_pod() -> dict:
    return k8s("Deployment", "personalize-server")["spec"]["template"]["spec"]


def test_k8s_server_reads_the_auth_secrets_from_a_mounted_secret() -> None:
    """The server and its check-auth init container both find the secrets file
    (PERSONALIZE_SERVER_AUTH_SECRETS_FILE) in a read-only, non-optional Secret
    volume whose item is a key the Secret carries; no secret is in the environment."""
    spec = server_pod()
    (server,) = spec["containers"]
    (check,) = spec["initContainers"]
    assert check["name"] == "check-auth" and check["image"] == server["image"]
    for container in (server, check):
        assert not any("secretRef" in r for r in container.get("envFrom", [])), \
            f"{container['name']}: envFrom a Secret puts the auth secrets into the env"
        env = container_env(container)
        assert "PERSONALIZE_SERVER_AUTH_SECRETS" not in env, "secrets belong in a file"
        path = env.get(SECRETS_FILE)
        assert path, f"{container['name']}: {SECRETS_FILE} is not set: auth would be off"
        secret, key = secret_file(spec, container, path)
        assert key in secret_data(secret), f"Secret {secret} has no key {key}"
        assert not key.startswith("PERSONALIZE_"), "a file key, not an env name"
    assert container_env(check)[SECRETS_FILE] == container_env(server)[SECRETS_FILE]


def check_auth_argv() -> list[str]:
    """The check-auth command as `personalize` arguments (output redirect dropped)."""
    (check,) = server_pod()["initContainers"]
    assert check["command"][:2] == ["sh", "-c"]
    words = [w for w in shlex.split(check["command"][2]) if w not in (">", "/dev/null")]
    assert words[:2] == ["personalize", "token"], words
    return words[1:]


@pytest.mark.parametrize(("content", "starts"), [
    ("", False),                                    # the committed placeholder
    ("\n", False),
    ("too-short-a-secret", False),
    ("0123456789abcdef" * 4 + "\n", True),          # openssl rand -hex 32
    ("0123456789abcdef" * 4 + "\n" + "f" * 64, True),  # rotation: new, old
], ids=["empty", "blank", "short", "one-secret", "two-secrets"])
def test_k8s_check_auth_stops_the_pod_unless_auth_is_on(
        content: str, starts: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The init container runs `personalize token` on the mounted file: it fails
    (the pod does not start) exactly when the server would run without auth."""
    secrets = tmp_path / "auth-secrets"
    secrets.write_text(content)
    for name in ("PERSONALIZE_SERVER_AUTH_SECRETS", SECRETS_FILE):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(SECRETS_FILE, str(secrets))
    assert (cli.main(check_auth_argv()) == 0) is starts


def test_k8s_check_auth_fails_without_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERSONALIZE_SERVER_AUTH_SECRETS", raising=False)
    monkeypatch.setenv(SECRETS_FILE, str(tmp_path / "missing"))
    assert cli.main(check_auth_argv()) != 0
