"""Delivery in the manifests: the materializer's Deployment and compose service (a real
`dfd-worker` command, settings the code accepts, its own consumer group, probes that hit its
health server, the CPU image), and the workers' rebalance settings."""

from __future__ import annotations


import pytest

from tests.deploy.conftest import DOCKER, KUBERNETES, OVERLAYS, dockerfile_env, one, pod_env
from tests.deploy.conftest import http_status, render, split_image
from tests.deploy.test_compose import compose, service_settings
from worker.cli import main
from worker.settings import Settings


def _container(resources):
    pod = one(resources, "Deployment", "dfd-materializer")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return container


def _settings(resources) -> Settings:
    return Settings.from_env(pod_env(resources, dockerfile_env(DOCKER / "Dockerfile.cpu"), _container(resources)))


def test_runs_the_materialize_command_in_its_own_group(overlay):
    _, resources = overlay
    container = _container(resources)
    assert container["args"][:2] == ["dfd-worker", "materialize"]
    with pytest.raises(SystemExit) as exited:  # a command dfd-worker knows
        main(["materialize", "--help"])
    assert exited.value.code == 0
    settings = _settings(resources)
    worker = Settings.from_env(pod_env(resources, dockerfile_env(DOCKER / "Dockerfile.cpu")))
    # its own group on the results topic, the workers' Kafka, Redis, key prefix and TTL
    assert settings.materializer_group_id not in ("", worker.group_id)
    for name in ("kafka_bootstrap", "results_topic", "redis_url", "redis_key_prefix", "redis_ttl_s"):
        assert getattr(settings, name) == getattr(worker, name), name


def test_uses_the_cpu_image_in_every_overlay():
    images = {}
    for name in OVERLAYS:
        resources = render(KUBERNETES / "overlays" / name)
        images[name] = split_image(_container(resources)["image"])
    cpu_worker = split_image(next(
        c["image"] for c in one(render(KUBERNETES / "overlays" / "cpu"), "Deployment", "dfd-worker")["spec"]["template"]["spec"]["containers"]
    ))
    assert images["cpu"] == images["gpu"] == cpu_worker


def test_probes_and_monitor_hit_the_health_server(overlay, health_server):
    _, resources = overlay
    container = _container(resources)
    settings = _settings(resources)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == settings.http_port
    state, port = health_server
    state.models_loaded = True  # the materializer has nothing to load
    state.tick(broker_reachable=True)
    for kind in ("liveness", "readiness"):
        probe = container[f"{kind}Probe"]["httpGet"]
        assert probe["port"] == "http" and http_status(port, probe["path"]) == 200
    monitor = one(resources, "PodMonitor", "dfd-materializer")
    pod_labels = one(resources, "Deployment", "dfd-materializer")["spec"]["template"]["metadata"]["labels"]
    assert pod_labels.items() >= monitor["spec"]["selector"]["matchLabels"].items()
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "http"
    # and the worker's selectors never pick the materializer's pods
    worker_selector = one(resources, "Deployment", "dfd-worker")["spec"]["selector"]["matchLabels"]
    assert not pod_labels.items() >= worker_selector.items()


def test_compose_runs_a_materializer_like_the_worker():
    services = compose()["services"]
    svc = services["materializer"]
    assert svc["command"][:2] == ["dfd-worker", "materialize"]
    settings, worker = service_settings("materializer"), service_settings("worker")
    assert settings.materializer_group_id != worker.group_id
    for name in ("kafka_bootstrap", "results_topic", "redis_url", "redis_key_prefix"):
        assert getattr(settings, name) == getattr(worker, name), name
    assert svc["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
    assert svc["read_only"] is True


def test_workers_rebalance_cooperatively_with_dynamic_membership(overlay):
    """docs/streaming.md: cooperative-sticky, and no static membership for the KEDA-scaled
    Deployment (a static member that leaves holds its partitions until the session times out)."""
    from worker.service.kafka_clients import consumer_config

    _, resources = overlay
    settings = Settings.from_env(pod_env(resources, dockerfile_env(DOCKER / "Dockerfile.cpu")))
    assert settings.kafka_assignor == "cooperative-sticky"
    assert settings.kafka_group_instance_id == ""
    assert "group_instance_id" not in consumer_config(settings)
