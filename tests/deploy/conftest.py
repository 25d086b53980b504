"""Fixtures for the deploy/ checks: paths, rendered overlays, Dockerfile parsing, a live health server."""

from __future__ import annotations

import shutil
import subprocess
import urllib.error
import urllib.request
from functools import lru_cache
from pathlib import Path
from typing import Any

import dockerfile
import pytest
import yaml

from worker.service.health import HealthServer, HealthState

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
DOCKER = DEPLOY / "docker"
OVERLAYS = ("cpu", "gpu")


def images_module():
    """deploy/images.py (podman builds; not a package, so loaded by path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("dfd_images", DEPLOY / "images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def podman_or_skip():
    """deploy/images.py with podman ready (installed with apt-get when missing), else skip saying why."""
    images = images_module()
    try:
        images.ensure_podman()
    except images.Unavailable as exc:
        pytest.skip(f"no podman: {exc}")
    return images


def render(folder: str | Path) -> list[dict[str, Any]]:
    """The resources `kubectl kustomize folder` prints, as dicts, in order (a fresh copy per call)."""
    import copy

    return copy.deepcopy(_render(str(Path(folder).resolve())))


@lru_cache(maxsize=None)
def _render(folder: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the overlays are rendered with `kubectl kustomize`")
    done = subprocess.run([kubectl, "kustomize", folder], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"kubectl kustomize {folder} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def split_image(ref: str) -> tuple[str, str, str]:
    """`registry:5000/repo/name:tag@sha256:...` -> (name, tag, digest); empty parts are ''."""
    ref, _, digest = ref.partition("@")
    name, tag = ref, ""
    head, sep, tail = ref.rpartition(":")
    if sep and "/" not in tail:  # a colon after the last slash is the tag, not a port
        name, tag = head, tail
    return name, tag, digest


def one(resources: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The single resource of that kind (and name) in a rendered overlay."""
    found = [r for r in resources if r["kind"] == kind and (name is None or r["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def worker_container(resources: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(resources, "Deployment", "dfd-worker")["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "worker")


def dockerfile_env(path: Path) -> dict[str, str]:
    """ENV of the final stage of a Dockerfile (what the container starts with)."""
    env: dict[str, str] = {}
    for cmd in final_stage(path):
        if cmd.cmd == "ENV":
            pairs = cmd.value
            env.update(dict(zip(pairs[::2], pairs[1::2])))
    return env


def stages(path: Path) -> list[list[dockerfile.Command]]:
    """Commands grouped by build stage (each starts with its FROM)."""
    out: list[list[dockerfile.Command]] = []
    for cmd in dockerfile.parse_file(str(path)):
        if cmd.cmd == "FROM":
            out.append([])
        if out:
            out[-1].append(cmd)
    return out


def final_stage(path: Path) -> list[dockerfile.Command]:
    return stages(path)[-1]


# what the downward API gives a pod of the worker Deployment (fieldRef -> value)
POD_FIELDS = {"metadata.name": "dfd-worker-7c9d8f6b5-x2k4p", "metadata.namespace": "default"}


def pod_env(resources: list[dict[str, Any]], image_env: dict[str, str], container: dict[str, Any] | None = None) -> dict[str, str]:
    """A container's environment (the worker's by default): image ENV, then envFrom
    ConfigMaps/Secrets, then env (downward-API fields filled in as for a pod)."""
    container = container or worker_container(resources)
    env = dict(image_env)
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(one(resources, "ConfigMap", source["configMapRef"]["name"]).get("data", {}))
        if "secretRef" in source:
            env.update(one(resources, "Secret", source["secretRef"]["name"]).get("stringData", {}))
    for var in container.get("env", []):
        env[var["name"]] = var["value"] if "value" in var else POD_FIELDS[var["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


@pytest.fixture(scope="session", params=OVERLAYS)
def overlay(request) -> tuple[str, list[dict[str, Any]]]:
    """(name, rendered resources) of each overlay."""
    return request.param, render(KUBERNETES / "overlays" / request.param)


@pytest.fixture
def health_server():
    """The worker's own health server on a free port, with its state to steer."""
    state = HealthState(stall_s=60.0)
    server = HealthServer(state, port=0, host="127.0.0.1").start()
    yield state, server.port
    server.stop()


def http_status(port: int, path: str) -> int:
    """The status of GET http://127.0.0.1:port/path (error statuses included)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
