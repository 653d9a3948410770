"""The Kubernetes manifests: kustomization lists them all; ports, probes, the
ReadWriteMany adapter store mounted at the same path in server and trainer.
Fast, no cluster."""

from __future__ import annotations

import yaml

from tests.deploy.helpers import K8S, SERVER, TRAINER, configmap_env, k8s, k8s_docs


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


