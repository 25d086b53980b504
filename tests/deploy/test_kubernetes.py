"""The Kubernetes overlays, rendered offline: valid objects, and in step with the worker's code.

Core kinds are checked with kubernetes-validate (strict: unknown fields fail) against the
oldest and newest Kubernetes it knows; the KEDA, Prometheus Operator and Strimzi kinds
against the minimal schemas in schemas/. Then the rendered values are checked against what
the code does: the settings object accepts the environment, the probes hit the health
server's real endpoints, the grace period covers the drain, KEDA watches the worker's
group and topic and never wants more replicas than partitions.
"""

from __future__ import annotations

import dataclasses
import json
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy.conftest import DOCKER, KUBERNETES, OVERLAYS, dockerfile_env, one, pod_env, render, split_image, worker_container
from tests.deploy.conftest import http_status
from worker.settings import ENV_PREFIX, Settings, env_name

SCHEMAS = Path(__file__).parent / "schemas"
CUSTOM_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda-scaledobject.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda-triggerauthentication.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "prometheus-podmonitor.json",
    ("kafka.strimzi.io/v1beta2", "KafkaTopic"): "strimzi-kafkatopic.json",
}
K8S_VERSIONS = ("1.29.0", "1.37.0")
BASE_LABELS = {
    "app.kubernetes.io/name": "dfd-worker",
    "app.kubernetes.io/part-of": "deepfake-stream",
    "app.kubernetes.io/component": "worker",
}
MATERIALIZER_LABELS = {**BASE_LABELS, "app.kubernetes.io/name": "dfd-materializer", "app.kubernetes.io/component": "materializer"}
# KEDA's kafka trigger vocabulary for the worker's DFD_KAFKA_SASL_MECHANISM
KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}


def validate_custom(resource: dict) -> None:
    name = CUSTOM_SCHEMAS[(resource["apiVersion"], resource["kind"])]
    jsonschema.validate(resource, json.loads((SCHEMAS / name).read_text()))


def settings_for(name: str, resources: list[dict]) -> Settings:
    image_env = dockerfile_env(DOCKER / f"Dockerfile.{name}")
    return Settings.from_env(pod_env(resources, image_env))


# --- validity ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_kinds_validate_strictly(overlay, version):
    name, resources = overlay
    core = [r for r in resources if (r["apiVersion"], r["kind"]) not in CUSTOM_SCHEMAS]
    assert {r["kind"] for r in core} >= {"Deployment", "ConfigMap", "Secret", "PodDisruptionBudget", "ServiceAccount"}
    for res in core:
        try:
            kubernetes_validate.validate(res, version, strict=True)
        except kubernetes_validate.ValidationError as exc:  # its message is pages long
            pytest.fail(f"{name}: {res['kind']}/{res['metadata']['name']} invalid for {version}: {str(exc).splitlines()[0]}")


def test_custom_kinds_match_their_schemas(overlay):
    _, resources = overlay
    custom = [r for r in resources if (r["apiVersion"], r["kind"]) in CUSTOM_SCHEMAS]
    assert {r["kind"] for r in custom} == {"ScaledObject", "TriggerAuthentication", "PodMonitor"}
    for res in custom:
        validate_custom(res)


def test_topics_match_their_schema():
    topics = render(KUBERNETES / "topics")
    assert len(topics) == 3
    for res in topics:
        validate_custom(res)


@pytest.mark.parametrize(
    "path, value",
    [
        (("spec", "triggers", 0, "metadata", "lagTreshold"), "10"),  # a typo of lagThreshold
        (("spec", "triggers", 0, "metadata", "allowIdleConsumers"), False),  # must be a string
        (("spec", "maxReplicas"), 3),  # HPA's name, not KEDA's
    ],
)
def test_scaledobject_schema_catches_mistakes(path, value):
    scaled = one(render(KUBERNETES / "overlays" / "cpu"), "ScaledObject")
    node = scaled
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        validate_custom(scaled)


def test_podmonitor_schema_catches_a_bad_interval():
    monitor = one(render(KUBERNETES / "overlays" / "cpu"), "PodMonitor", "dfd-worker")
    monitor["spec"]["podMetricsEndpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(jsonschema.ValidationError):
        validate_custom(monitor)


def test_core_validation_catches_unknown_fields():
    deployment = one(render(KUBERNETES / "overlays" / "cpu"), "Deployment", "dfd-worker")
    worker_container([deployment])["livenessProbe"]["httpGet"]["paht"] = "/healthz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


# --- settings ------------------------------------------------------------------------------


def test_every_dfd_variable_is_a_setting(overlay):
    name, resources = overlay
    known = {env_name(f.name) for f in dataclasses.fields(Settings)}
    set_here = {
        key
        for res in resources
        if res["kind"] in ("ConfigMap", "Secret")
        for key in {**res.get("data", {}), **res.get("stringData", {})}
    }
    assert set_here, "no settings in the ConfigMap/Secret"
    assert all(key.startswith(ENV_PREFIX) for key in set_here), sorted(set_here)
    assert set_here <= known, f"{name}: not settings: {sorted(set_here - known)}"
    # and the worker accepts the whole environment (names and values), as it would at start-up
    settings_for(name, resources)


def test_secrets_are_in_the_secret_not_the_configmap(overlay):
    _, resources = overlay
    secret_names = {env_name(f.name) for f in dataclasses.fields(Settings) if f.metadata.get("secret")}
    assert secret_names, "Settings marks no field secret"
    assert not secret_names & set(one(resources, "ConfigMap").get("data", {}))
    assert secret_names <= set(one(resources, "Secret").get("stringData", {}))
    # placeholders only: real credentials never live in the repository
    assert all(value == "" for value in one(resources, "Secret")["stringData"].values())


def test_overlays_pick_their_execution_providers():
    providers = {name: settings_for(name, render(KUBERNETES / "overlays" / name)).providers for name in OVERLAYS}
    assert providers["cpu"] == ("cpu",)
    assert providers["gpu"][0] == "cuda"


# --- probes and metrics against the worker's health server ---------------------------------


def test_container_port_is_the_workers_http_port(overlay):
    name, resources = overlay
    settings = settings_for(name, resources)
    ports = {p["name"]: p["containerPort"] for p in worker_container(resources)["ports"]}
    assert ports["http"] == settings.http_port
    assert settings.http_port == Settings().http_port  # and the default, which the image's health check uses


def test_probes_hit_the_health_servers_endpoints(overlay, health_server):
    _, resources = overlay
    container = worker_container(resources)
    probes = {kind: container[f"{kind}Probe"]["httpGet"] for kind in ("startup", "liveness", "readiness")}
    assert all(p["port"] == "http" for p in probes.values())
    state, port = health_server

    # starting: alive but not ready (models not loaded, broker not reached)
    assert http_status(port, probes["startup"]["path"]) == 200
    assert http_status(port, probes["liveness"]["path"]) == 200
    assert http_status(port, probes["readiness"]["path"]) == 503
    # models loaded and broker reachable: ready
    state.models_loaded = True
    state.tick(broker_reachable=True)
    assert http_status(port, probes["readiness"]["path"]) == 200
    # broker lost: out of the ready set, still alive (no restart for a broker outage)
    state.tick(broker_reachable=False)
    assert http_status(port, probes["readiness"]["path"]) == 503
    assert http_status(port, probes["liveness"]["path"]) == 200


def test_podmonitor_scrapes_the_metrics_endpoint(overlay, health_server):
    _, resources = overlay
    monitor = one(resources, "PodMonitor", "dfd-worker")
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] in {p["name"] for p in worker_container(resources)["ports"]}
    _, port = health_server
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{endpoint['path']}", timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        assert b"# TYPE" in resp.read()


# --- shutdown, scaling, labels, images -----------------------------------------------------


def test_grace_period_outlasts_the_drain(overlay):
    name, resources = overlay
    settings = settings_for(name, resources)
    grace = one(resources, "Deployment", "dfd-worker")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # the drain, then publishing and committing the last verdicts
    assert grace >= settings.drain_grace_s + 10


def test_keda_watches_the_workers_group_and_topic(overlay):
    name, resources = overlay
    settings = settings_for(name, resources)
    scaled = one(resources, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == one(resources, "Deployment", "dfd-worker")["metadata"]["name"]
    (trigger,) = scaled["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert meta["bootstrapServers"] == settings.kafka_bootstrap
    assert meta["consumerGroup"] == settings.group_id
    assert meta["topic"] == settings.requests_topic
    # the worker commits and restarts from committed offsets; a new group starts at the beginning
    assert meta["offsetResetPolicy"] == "earliest"
    assert trigger["authenticationRef"]["name"] == one(resources, "TriggerAuthentication")["metadata"]["name"]


def test_keda_kafka_security_matches_the_workers(overlay):
    name, resources = overlay
    settings = settings_for(name, resources)
    meta = one(resources, "ScaledObject")["spec"]["triggers"][0]["metadata"]
    protocol = settings.kafka_security_protocol
    assert meta["tls"] == ("enable" if protocol.endswith("SSL") else "disable")
    if protocol.startswith("SASL"):
        assert meta["sasl"] == KEDA_SASL[settings.kafka_sasl_mechanism]
    else:
        assert meta["sasl"] == "none"
    # KEDA reads the worker's own credentials
    auth = one(resources, "TriggerAuthentication")["spec"]["secretTargetRef"]
    secret = one(resources, "Secret")
    assert {ref["parameter"]: ref["key"] for ref in auth} == {
        "username": env_name("kafka_sasl_username"),
        "password": env_name("kafka_sasl_password"),
    }
    assert all(ref["name"] == secret["metadata"]["name"] for ref in auth)


def test_lag_threshold_exceeds_the_in_flight_window(overlay):
    """Videos in flight are uncommitted, so they count as lag: a threshold at or below the
    window would make one busy-but-keeping-up replica ask for another."""
    name, resources = overlay
    settings = settings_for(name, resources)
    meta = one(resources, "ScaledObject")["spec"]["triggers"][0]["metadata"]
    assert int(meta["lagThreshold"]) > settings.max_in_flight


def test_max_replicas_within_the_requests_topic_partitions(overlay):
    name, resources = overlay
    settings = settings_for(name, resources)
    spec = one(resources, "ScaledObject")["spec"]
    topics = {t["spec"]["topicName"]: t["spec"] for t in render(KUBERNETES / "topics")}
    partitions = topics[settings.requests_topic]["partitions"]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions
    assert {settings.results_topic, settings.dead_letter_topic} <= set(topics)


def test_labels_and_selectors_agree(overlay):
    _, resources = overlay
    for res in resources:
        # the materializer's objects carry their own name and component (test_delivery_manifests.py)
        expected = BASE_LABELS if res["metadata"]["name"] != "dfd-materializer" else MATERIALIZER_LABELS
        assert res["metadata"]["labels"].items() >= expected.items(), res["kind"]
    deployment = one(resources, "Deployment", "dfd-worker")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (
        deployment["spec"]["selector"]["matchLabels"],
        one(resources, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        one(resources, "PodMonitor", "dfd-worker")["spec"]["selector"]["matchLabels"],
    ):
        assert selector and pod_labels.items() >= selector.items()


def test_overlays_agree_on_names_labels_and_images():
    rendered = {name: render(KUBERNETES / "overlays" / name) for name in OVERLAYS}
    ids = {name: sorted((r["kind"], r["metadata"]["name"]) for r in res) for name, res in rendered.items()}
    assert ids["cpu"] == ids["gpu"]
    images = {}
    for name, resources in rendered.items():
        pod = one(resources, "Deployment", "dfd-worker")["spec"]["template"]["spec"]
        images[name] = {c["name"]: split_image(c["image"]) for c in pod["containers"] + pod["initContainers"]}
    # one repository for the worker, a tag per variant; one bundle image for both
    assert images["cpu"]["worker"][0] == images["gpu"]["worker"][0]
    assert images["cpu"]["worker"][0] != "dfd-worker", "the images transformer did not apply"
    assert images["cpu"]["worker"][1].endswith("-cpu") and images["gpu"]["worker"][1].endswith("-gpu")
    assert images["cpu"]["model-bundle"] == images["gpu"]["model-bundle"]


def test_gpu_overlay_requests_a_gpu_and_gpu_nodes():
    resources = render(KUBERNETES / "overlays" / "gpu")
    pod = one(resources, "Deployment", "dfd-worker")["spec"]["template"]["spec"]
    limits = worker_container(resources)["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    cpu_limits = worker_container(render(KUBERNETES / "overlays" / "cpu"))["resources"]["limits"]
    assert "nvidia.com/gpu" not in cpu_limits


def test_pod_runs_non_root_on_a_read_only_root_filesystem(overlay):
    name, resources = overlay
    pod = one(resources, "Deployment", "dfd-worker")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    mounts = {}
    for container in pod["containers"] + pod["initContainers"]:
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        mounts[container["name"]] = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    image_env = dockerfile_env(DOCKER / f"Dockerfile.{name}")
    settings = settings_for(name, resources)
    # the writable places the image expects, and the bundle where the settings look for it
    for path in (image_env["HOME"], image_env["TMPDIR"]):
        assert "emptyDir" in volumes[mounts["worker"][path]]
    assert mounts["worker"][settings.model_dir] == mounts["model-bundle"][settings.model_dir]


def test_model_bundle_init_container_copies_into_the_model_dir(overlay):
    name, resources = overlay
    settings = settings_for(name, resources)
    init = one(resources, "Deployment", "dfd-worker")["spec"]["template"]["spec"]["initContainers"][0]
    script = init["command"][-1]
    assert "manifest.json" in script and script.rstrip("/").endswith(settings.model_dir)
    # the same copy the bundle image runs by default (deploy/docker/Dockerfile.bundle)
    bundle_cmd = [c for c in (DOCKER / "Dockerfile.bundle").read_text().splitlines() if c.startswith("CMD ")]
    assert json.loads(bundle_cmd[0][4:]) == init["command"]


def test_every_kustomization_renders_with_kubectl():
    """Every kustomization under deploy/ renders with `kubectl kustomize` (Kustomize itself)."""
    folders = sorted(p.parent for p in KUBERNETES.rglob("kustomization.yaml"))
    assert len(folders) == 5  # base, overlays/cpu, overlays/gpu, topics, api
    for folder in folders:
        assert render(folder), folder
    # and base's kustomization lists every manifest in its folder, so none is forgotten
    base = KUBERNETES / "base"
    listed = set(yaml.safe_load((base / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in base.glob("*.yaml")} - {"kustomization.yaml"}
