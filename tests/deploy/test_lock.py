"""The images install from lock files with hashes (deploy/requirements/*.lock, `make lock`),
and those are in step with pyproject.toml: every dependency of the image's extra is locked at
a version its specifier accepts, with hashes, and the Dockerfiles install from them."""

from __future__ import annotations

import re
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.conftest import DOCKER, REPO

REQUIREMENTS = REPO / "deploy" / "requirements"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def locked(variant: str, text: str | None = None) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of a lock file."""
    out: dict[str, tuple[str, list[str]]] = {}
    text = (REQUIREMENTS / f"{variant}.lock").read_text() if text is None else text
    for block in re.split(r"\n(?=\S)", text):
        match = re.match(r"([A-Za-z0-9_.\-]+)==([^\s\\;]+)", block)
        if match and not block.startswith("#"):
            out[canonicalize_name(match.group(1))] = (match.group(2), re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return out


def wanted(variant: str) -> list[Requirement]:
    project = PYPROJECT["project"]
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"][variant]]
    reqs += [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]
    extra_in = REQUIREMENTS / f"{variant}.in"
    if extra_in.is_file():
        reqs += [Requirement(line) for line in extra_in.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return reqs


def problems(variant: str, lock: dict[str, tuple[str, list[str]]]) -> list[str]:
    found = [] if lock else [f"{variant}.lock lists nothing"]
    for req in wanted(variant):
        name = canonicalize_name(req.name)
        if name not in lock:
            found.append(f"{req} (pyproject.toml) is not in {variant}.lock")
        elif not req.specifier.contains(lock[name][0], prereleases=True):
            found.append(f"{variant}.lock has {name}=={lock[name][0]}, pyproject.toml wants {req}")
    found += [f"{name}=={version} in {variant}.lock has no hash" for name, (version, hashes) in lock.items() if not hashes]
    return found


@pytest.mark.parametrize("variant", ["cpu", "gpu", "api"])
def test_lock_is_in_step_with_pyproject(variant):
    lock = locked(variant)
    assert problems(variant, lock) == [], "run `make lock`"
    # one ONNX Runtime per worker image, never both (they share a module name); none for the API
    runtimes = {"onnxruntime", "onnxruntime-gpu"} & set(lock)
    assert runtimes == {"cpu": {"onnxruntime"}, "gpu": {"onnxruntime-gpu"}, "api": set()}[variant]


def test_a_stale_lock_is_caught():
    text = (REQUIREMENTS / "cpu.lock").read_text()
    stale = text.replace("kafka-python==3.0.12", "kafka-python==3.0.11")
    assert stale != text
    assert problems("cpu", locked("cpu", stale)) == ["cpu.lock has kafka-python==3.0.11, pyproject.toml wants kafka-python==3.0.12"]
    lock = locked("cpu")
    del lock["structlog"]
    lock["numpy"] = (lock["numpy"][0], [])
    found = problems("cpu", lock)
    assert any(p.startswith("structlog") and "is not in cpu.lock" in p for p in found)
    assert any(p.startswith("numpy==") and p.endswith("has no hash") for p in found)


@pytest.mark.parametrize("variant", ["cpu", "gpu", "api"])
def test_dockerfiles_install_from_the_lock_with_hashes(variant):
    text = (DOCKER / f"Dockerfile.{variant}").read_text()
    assert f"COPY deploy/requirements/{variant}.lock" in text
    assert f"pip install --require-hashes --no-deps -r /src/{variant}.lock" in text
    # the project itself adds nothing from the index
    assert "pip install --no-deps --no-build-isolation --no-index ." in text
    assert not re.search(r"pip install (?!--require-hashes|--no-deps --no-build-isolation --no-index)", text)
