"""deploy/compose/compose.yaml: valid against the Compose Specification's schema and in step
with the worker (settings, drain time, health port, topics) and the images.

No Docker engine here, so the stack itself is not started (see docs/deploy.md).
"""

from __future__ import annotations

import base64
import dataclasses
import importlib.resources
import json
import os
import re
import shlex
import subprocess
import sys

import jsonschema
import pytest
import yaml

from tests.deploy.conftest import DEPLOY, REPO, dockerfile_env, podman_or_skip
from worker.settings import ENV_PREFIX, Settings, env_name

COMPOSE_FILE = DEPLOY / "compose" / "compose.yaml"


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def compose_schema() -> dict:
    # the Compose Specification's schema, as vendored (with its licence) by check-jsonschema
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text())


def seconds(duration: str) -> float:
    """Compose durations: '45s', '1m30s', '500ms'."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def scale_bound() -> int:
    """The documented bound for `docker compose up --scale worker=N`."""
    return int(re.search(r"--scale worker=N, N <= (\d+)", COMPOSE_FILE.read_text()).group(1))


def service_settings(name: str) -> Settings:
    """What the service's process sees: its image's ENV, then the compose environment."""
    svc = compose()["services"][name]
    env = dockerfile_env(REPO / svc["build"]["dockerfile"])
    env.update({k: str(v) for k, v in svc["environment"].items()})
    return Settings.from_env({k: v for k, v in env.items() if k.startswith(ENV_PREFIX)})


def test_matches_the_compose_specification():
    doc = compose()
    jsonschema.validate(doc, compose_schema())
    assert {"kafka", "topics", "redis", "worker", "producer"} <= set(doc["services"])


def podman_compose_config(tmp_path) -> dict:
    """The file as podman-compose (a real compose implementation) reads and resolves it."""
    podman_or_skip()  # podman-compose asks `podman version` first: install podman on a fresh machine
    env = dict(os.environ, MODEL_BUNDLE=str(tmp_path), VIDEOS=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "podman_compose", "-f", str(COMPOSE_FILE), "config"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr + done.stdout
    return yaml.safe_load(done.stdout)


def test_podman_compose_accepts_the_file(tmp_path):
    resolved = podman_compose_config(tmp_path)
    assert set(resolved["services"]) == set(compose()["services"])
    worker = resolved["services"]["worker"]
    assert f"{tmp_path}:/models/bundle:ro" in worker["volumes"]
    assert resolved["services"]["producer"]["environment"]["DFD_KAFKA_BOOTSTRAP"] == "kafka:9092"
    # podman-compose only passes `ports` on; podman itself judges them when it creates the pod
    env = podman_or_skip().podman_env()
    podman = "podman"
    for name, service in resolved["services"].items():
        for spec in service.get("ports", []):
            pod = f"dfd-compose-check-{os.getpid()}-{name}"
            done = subprocess.run([podman, "pod", "create", "--name", pod, "-p", str(spec)],
                                  capture_output=True, text=True, env=env, timeout=60)
            subprocess.run([podman, "pod", "rm", "-f", pod], capture_output=True, env=env, timeout=60)
            assert done.returncode == 0, f"podman refuses {name}'s port {spec!r}: {done.stderr}"


def test_podman_refuses_a_host_port_range_for_one_container_port():
    """What the old `8080-8083:8080` mapping ran into; shows the check above can fail."""
    env = podman_or_skip().podman_env()
    done = subprocess.run(["podman", "pod", "create", "--name", f"dfd-compose-range-{os.getpid()}", "-p", "8080-8083:8080"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode != 0 and "different lengths" in done.stderr


def test_schema_catches_a_misspelt_key():
    doc = compose()
    doc["services"]["worker"]["stop_grace_perod"] = "45s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, compose_schema())


def test_every_dfd_variable_is_a_setting():
    services = compose()["services"]
    assert "DFD_MODEL_DIR" in services["worker"]["environment"]
    for name in ("worker", "producer"):
        service_settings(name)  # raises on unknown DFD_* names and bad values
    known = {env_name(f.name) for f in dataclasses.fields(Settings)}
    for name, svc in services.items():
        dfd = {key for key in svc.get("environment", {}) if key.startswith(ENV_PREFIX)}
        assert dfd <= known, f"{name}: not settings: {sorted(dfd - known)}"
    # compose's own variables must not look like settings: the worker refuses unknown DFD_*
    interpolated = set(re.findall(r"\$\{(\w+)", COMPOSE_FILE.read_text()))
    assert interpolated and not {v for v in interpolated if v.startswith(ENV_PREFIX)}


def test_kafka_runs_kraft_and_advertises_the_workers_bootstrap():
    services = compose()["services"]
    kafka = services["kafka"]["environment"]
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"].split(",")
    assert not any("ZOOKEEPER" in key for key in kafka)
    advertised = dict(re.findall(r"(\w+)://([^,]+)", kafka["KAFKA_ADVERTISED_LISTENERS"]))
    settings = service_settings("worker")
    assert advertised[kafka["KAFKA_INTER_BROKER_LISTENER_NAME"]] == settings.kafka_bootstrap
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    # KRaft refuses to format storage with a cluster id that is not a base64url 16-byte UUID
    cluster_id = kafka["CLUSTER_ID"]
    assert len(cluster_id) == 22 and len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
    # Redis is the compose service the worker is pointed at
    assert re.match(r"redis://redis:6379/", settings.redis_url)


def test_topics_service_creates_the_workers_topics():
    services = compose()["services"]
    script = services["topics"]["command"][0]
    created = {}
    for line in script.replace("\\\n", " ").splitlines():
        args = shlex.split(line)
        if args and args[0].endswith("kafka-topics.sh"):
            assert "--if-not-exists" in args  # re-running `up` must not fail
            created[args[args.index("--topic") + 1]] = int(args[args.index("--partitions") + 1])
    settings = service_settings("worker")
    assert set(created) == {settings.requests_topic, settings.results_topic, settings.dead_letter_topic}
    assert scale_bound() == created[settings.requests_topic]
    assert services["worker"]["depends_on"]["topics"]["condition"] == "service_completed_successfully"


def test_worker_stops_after_its_drain():
    worker = compose()["services"]["worker"]
    assert seconds(worker["stop_grace_period"]) >= service_settings("worker").drain_grace_s + 10


def test_worker_is_read_only_with_its_bundle_and_videos_mounted():
    worker = compose()["services"]["worker"]
    settings = service_settings("worker")
    image_env = dockerfile_env(REPO / worker["build"]["dockerfile"])
    assert worker["read_only"] is True
    assert {image_env["HOME"], image_env["TMPDIR"]} <= set(worker["tmpfs"])
    targets = {v.split(":")[-2]: v for v in worker["volumes"]}
    assert settings.model_dir in targets
    assert all(root in targets for root in settings.allowed_roots)
    assert all(v.endswith(":ro") for v in worker["volumes"])
    # the health port is published on a host port chosen per replica, so --scale never collides
    assert worker["ports"] == [str(settings.http_port)]


def test_images_are_built_from_this_repository():
    services = compose()["services"]
    for name in ("worker", "producer"):
        build = services[name]["build"]
        context = (COMPOSE_FILE.parent / build["context"]).resolve()
        assert context == REPO
        assert (context / build["dockerfile"]).is_file()
    assert services["worker"]["image"] == services["producer"]["image"]
    assert services["producer"]["depends_on"]["worker"]["condition"] == "service_healthy"


def test_producer_command_uses_the_producer_cli(capsys):
    from producer.cli import main

    command = compose()["services"]["producer"]["command"][0]
    submit = shlex.split(command.split("|")[-1])
    assert submit[:2] == ["dfd-producer", "submit"]
    with pytest.raises(SystemExit):
        main(["submit", "--help"])
    help_text = capsys.readouterr().out
    for flag in (a for a in submit[2:] if a.startswith("--")):
        assert flag in help_text
    assert submit[-1] == "-"  # URIs from stdin, which the CLI reads for '-'
