"""dfd-api's Kustomize manifests (deploy/kubernetes/api), rendered by `kubectl kustomize`: valid
objects, and in step with the code: settings accepted, probes on real endpoints, ports wired."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml

from api.webhooks import worst_case_s
from tests.deploy.conftest import KUBERNETES, one
from worker.settings import Settings, env_name

K8S_VERSIONS = ("1.29.0", "1.37.0")


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    out = subprocess.run([kubectl, "kustomize", str(KUBERNETES / "api")], capture_output=True, text=True, check=True)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def container(resources, deployment: str) -> dict:
    return one(resources, "Deployment", deployment)["spec"]["template"]["spec"]["containers"][0]


def settings_of(resources) -> Settings:
    env = dict(one(resources, "ConfigMap", "dfd-api")["data"])
    env.update(one(resources, "Secret", "dfd-api")["stringData"])
    return Settings.from_env(env)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_objects_validate_strictly(rendered, version):
    kinds = sorted((r["kind"], r["metadata"]["name"]) for r in rendered)
    assert kinds == [("ConfigMap", "dfd-api"), ("Deployment", "dfd-api"), ("Deployment", "dfd-api-webhooks"),
                     ("Ingress", "dfd-api"), ("Secret", "dfd-api"), ("Secret", "dfd-api-keys"), ("Service", "dfd-api")]
    for resource in rendered:
        kubernetes_validate.validate(resource, version, strict=True)


def test_settings_are_accepted_and_secrets_stay_in_the_secret(rendered):
    settings = settings_of(rendered)
    secret_names = {env_name(f.name) for f in dataclasses.fields(Settings) if f.metadata.get("secret")}
    assert not secret_names & set(one(rendered, "ConfigMap", "dfd-api")["data"])
    assert settings.webhook_secret == "" and not settings.api_cors_origins and not settings.http_allow_private
    assert worst_case_s(settings) < settings.kafka_max_poll_interval_ms / 1000  # the sender would refuse to start
    for name in ("dfd-api", "dfd-api-webhooks"):
        assert container(rendered, name)["image"] == "registry.example.com/dfd-api:0.1.0"


def test_ports_probes_service_and_ingress_are_wired(rendered, stack):
    from tests.api.conftest import serve

    settings = settings_of(rendered)
    api = container(rendered, "dfd-api")
    assert api["args"] == ["dfd-api", "serve"] and container(rendered, "dfd-api-webhooks")["args"] == ["dfd-api", "webhooks"]
    assert api["ports"][0]["containerPort"] == settings.api_port
    keys_mount = next(m for m in api["volumeMounts"] if m["name"] == "keys")
    assert settings.api_keys_file.startswith(keys_mount["mountPath"] + "/")
    service = one(rendered, "Service", "dfd-api")
    assert service["spec"]["ports"][0]["targetPort"] == api["ports"][0]["name"]
    assert service["spec"]["selector"].items() <= one(rendered, "Deployment", "dfd-api")["spec"]["template"]["metadata"]["labels"].items()
    backend = one(rendered, "Ingress", "dfd-api")["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "dfd-api", "port": {"name": service["spec"]["ports"][0]["name"]}}

    served, stop = serve(stack.settings(), run_indexer=False)
    try:
        with served.client(key=None) as http:
            for probe in ("livenessProbe", "readinessProbe"):
                assert http.get(api[probe]["httpGet"]["path"]).status_code == 200, probe
    finally:
        stop()
