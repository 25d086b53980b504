"""The CPU image, built with podman and run: a scan with a read-only root filesystem as the
non-root user, the streaming worker against the local broker and Redis, and its HEALTHCHECK.

Built once per run by deploy/images.py (the same code as `make images`): from the official
Python image where a registry answers, else from a Debian base made with debootstrap and
cached under ~/.cache/deepfake-stream/images/. Layers are cached by podman, so a run whose
inputs did not change rebuilds nothing. podman is installed with apt-get when missing; the
tests are skipped, with the reason, only where that is impossible.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
import uuid

import pytest

from producer.client import ScanClient
from tests.deploy.conftest import images_module, podman_or_skip
from tests.fixtures.stack import read_topic
from worker.localstack import free_port
from worker.types import ScanRequest

pytestmark = [pytest.mark.slow, pytest.mark.broker]

TAG = "localhost/dfd-worker:cpu-test"
UID = 10001


images = images_module()


def podman(*args, timeout=300, check=True) -> subprocess.CompletedProcess:
    done = subprocess.run(["podman", *map(str, args)], env=images.podman_env(), capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, f"podman {args[:2]}: {done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="session")
def cpu_image() -> str:
    podman_or_skip()
    tag, seconds = images.build("cpu", TAG)
    size = images.image_size(tag)
    print(f"\nCPU image {tag}: {size / 1e6:.0f} MB, build {seconds:.1f} s")
    return tag


@pytest.fixture
def mounts(tmp_path, untrained_bundle, carphone, no_face_clip):
    """The bundle and clips in folders the image's non-root user may read (the cache is private)."""
    bundle = shutil.copytree(untrained_bundle.path, tmp_path / "bundle")
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(carphone, videos / "carphone.mp4")
    shutil.copy(no_face_clip, videos / "no_face.mp4")
    for path in [tmp_path, *tmp_path.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return bundle, videos


def hardened(bundle, videos) -> list[str]:
    """What the pods and the compose file do: read-only root, tmpfs for /tmp and HOME, read-only mounts."""
    return ["--read-only", "--tmpfs", "/tmp", "--tmpfs", "/home/worker", "--cap-drop", "ALL",
            "-v", f"{bundle}:/models/bundle:ro", "-v", f"{videos}:/videos:ro"]


def test_image_runs_as_the_non_root_user_and_is_small(cpu_image):
    config = json.loads(podman("image", "inspect", cpu_image).stdout)[0]["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert images.image_size(cpu_image) <= 650e6  # the floor for the CPU image
    # what a scan needs is inside; what builds things is not
    done = podman("run", "--rm", cpu_image, "python", "-c",
                  "import importlib.util as u, os; print(os.getuid(), [m for m in ('pip', 'torch', 'retinaface', 'onnxruntime') if u.find_spec(m)])")
    assert done.stdout.split(None, 1) == [str(UID), "['onnxruntime']\n"]


def test_scan_inside_with_a_read_only_root(cpu_image, mounts, untrained_bundle):
    bundle, videos = mounts
    done = podman("run", "--rm", *hardened(bundle, videos), cpu_image,
                  "dfd-worker", "scan", "/videos/carphone.mp4", "/videos/no_face.mp4", timeout=300)
    verdicts = {v["uri"].rsplit("/", 1)[-1]: v for v in map(json.loads, done.stdout.splitlines())}
    assert verdicts["carphone.mp4"]["label"] in ("fake", "real") and verdicts["carphone.mp4"]["frames_with_faces"] >= 9
    assert verdicts["no_face.mp4"]["label"] == "no_face"
    model = verdicts["carphone.mp4"]["model"]
    assert model["sha256"] == untrained_bundle.info.sha256 and model["detector_sha256"] == untrained_bundle.info.detector_sha256
    # and the root filesystem really is read-only for that user
    denied = podman("run", "--rm", *hardened(bundle, videos), cpu_image, "python", "-c", "open('/opt/venv/x', 'w')", check=False)
    assert denied.returncode != 0 and ("Read-only file system" in denied.stderr or "Permission denied" in denied.stderr)


def test_worker_image_against_the_local_broker_and_redis(cpu_image, mounts, stack):
    bundle, videos = mounts
    settings = stack.settings(partitions=2)
    port = free_port()
    env = {"DFD_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "DFD_REDIS_URL": settings.redis_url,
           "DFD_REQUESTS_TOPIC": settings.requests_topic, "DFD_RESULTS_TOPIC": settings.results_topic,
           "DFD_DEAD_LETTER_TOPIC": settings.dead_letter_topic, "DFD_GROUP_ID": settings.group_id,
           "DFD_REDIS_KEY_PREFIX": settings.redis_key_prefix, "DFD_KAFKA_SESSION_TIMEOUT_MS": "6000",
           "DFD_FRAMES_PER_VIDEO": "4", "DFD_ALLOWED_ROOTS": "/videos", "DFD_HTTP_PORT": str(port)}
    name = f"dfd-worker-test-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    podman("run", "-d", "--name", name, "--network", "host", *hardened(bundle, videos),
           *[f"--env={k}={v}" for k, v in env.items()], cpu_image)
    try:
        ready_s = _wait_ready(port, name, started)
        print(f"\nworker image: {ready_s:.1f} s from `podman run` to ready")
        health = podman("healthcheck", "run", name, check=False)
        assert health.returncode == 0, health.stdout + health.stderr

        uris = ["file:///videos/carphone.mp4", "file:///videos/no_face.mp4", "file:///videos/missing.mp4"]
        requests = [ScanRequest(f"img-{i}-{uuid.uuid4().hex[:6]}", uri) for i, uri in enumerate(uris)]
        with ScanClient(settings) as client:
            client.submit(requests)
        verdicts = {r.json()["request_id"]: r.json() for r in read_topic(settings.kafka_bootstrap, settings.results_topic, count=3, timeout_s=180)}
        assert set(verdicts) == {r.request_id for r in requests}
        labels = [verdicts[r.request_id]["label"] for r in requests]
        assert labels[0] in ("fake", "real") and labels[1:] == ["no_face", "error"]

        stopped = podman("stop", "-t", "40", name, timeout=120)
        assert stopped.returncode == 0
        state = json.loads(podman("inspect", name).stdout)[0]["State"]
        assert state["ExitCode"] == 0, podman("logs", name, check=False).stdout[-3000:]
        # a stopped worker fails the same health check
        assert podman("healthcheck", "run", name, check=False).returncode != 0
    finally:
        podman("rm", "-f", name, check=False)


def _wait_ready(port: int, name: str, started: float, timeout_s: float = 120) -> float:
    while time.monotonic() - started < timeout_s:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        if podman("inspect", "--format", "{{.State.Running}}", name, check=False).stdout.strip() == "false":
            pytest.fail(f"the worker container exited: {podman('logs', name, check=False).stderr[-3000:]}")
        time.sleep(0.5)
    pytest.fail(f"not ready after {timeout_s} s: {podman('logs', name, check=False).stderr[-3000:]}")
