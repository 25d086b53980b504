"""Build the images with podman, on machines with or without a reachable container registry.

    python3 deploy/images.py build cpu|gpu|bundle|api [--tag T] [--bundle DIR]   # one image
    python3 deploy/images.py all [--bundle DIR]                              # `make images`
    python3 deploy/images.py base                                            # just the base image

Standard library only (it runs before any virtualenv exists). What it does, and why:
- podman runs with deploy/podman/containers.conf (runc, lower ulimits: see that file);
  when podman is missing it is installed with apt-get where that is possible (root).
- The base is the official `python:3.11-slim-bookworm` (busybox for the bundle image) when
  a registry answers; where none does, a Debian bookworm made with debootstrap (Python 3.11,
  ca-certificates) is imported as a local image, its root filesystem kept as a tar in the
  cache (`~/.cache/deepfake-stream/images/`), never in the repository.
- pip inside the build reaches the package index with the host's pip configuration and CA
  certificates, mounted read-only into the build (`-v`), never copied into an image.
- `--format docker` keeps the Dockerfiles' HEALTHCHECK (OCI images have no such field);
  `--layers` caches every step, so a second build of unchanged inputs takes seconds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "deploy" / "docker"
CONTAINERS_CONF = REPO / "deploy" / "podman" / "containers.conf"
OFFICIAL = {"python": "docker.io/library/python:3.11-slim-bookworm", "busybox": "docker.io/library/busybox:1.37"}
LOCAL_BASE = "localhost/dfd-base:bookworm-python3.11"
APT_PACKAGES = ["podman", "runc", "debootstrap", "containernetworking-plugins", "iptables", "catatonit"]
TAGS = {"cpu": "localhost/dfd-worker:cpu", "gpu": "localhost/dfd-worker:gpu", "bundle": "localhost/dfd-model-bundle:local",
        "api": "localhost/dfd-api:local"}


class Unavailable(RuntimeError):
    """Images cannot be built or run on this machine; the message says why."""


def cache_dir() -> Path:
    # the same place as worker.paths.cache_dir(), without importing the project
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "deepfake-stream", "images")


def podman_env() -> dict[str, str]:
    return dict(os.environ, CONTAINERS_CONF=str(CONTAINERS_CONF))


def podman(*args: str, check: bool = True, capture: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(["podman", *args], env=podman_env(), text=True, timeout=timeout,
                          stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE if capture else None)
    if check and done.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])} ... failed ({done.returncode}): {(done.stderr or '')[-2000:]}")
    return done


def ensure_podman() -> None:
    """podman (with runc and debootstrap) on PATH, installed with apt-get if missing and possible."""
    if all(shutil.which(tool) for tool in ("podman", "runc", "debootstrap", "catatonit")):
        return
    if shutil.which("apt-get") is None:
        raise Unavailable("podman is not installed and there is no apt-get to install it")
    if os.geteuid() != 0:
        raise Unavailable("podman is not installed and installing it with apt-get needs root")
    install = ["apt-get", "install", "-y", "--no-install-recommends", *APT_PACKAGES]
    done = subprocess.run(install, capture_output=True, text=True, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    if done.returncode != 0:  # the package lists may be missing or stale on a fresh machine
        subprocess.run(["apt-get", "update"], capture_output=True)
        done = subprocess.run(install, capture_output=True, text=True, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    if done.returncode != 0 or shutil.which("podman") is None:
        raise Unavailable(f"apt-get could not install podman: {done.stderr.strip()[-500:]}")


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def pulled(name: str) -> bool:
    """The official image is here or can be pulled (a registry answers)."""
    return image_exists(name) or podman("pull", "-q", name, check=False, timeout=300).returncode == 0


def local_base() -> str:
    """A Debian bookworm with Python 3.11 as a local image, made with debootstrap once and cached."""
    if image_exists(LOCAL_BASE):
        return LOCAL_BASE
    tar = cache_dir() / "debian-bookworm-python3.11.tar"
    if not tar.is_file():
        if shutil.which("debootstrap") is None:
            raise Unavailable("no registry answers and debootstrap is not installed to make a base image")
        tar.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=tar.parent) as tmp:
            rootfs = Path(tmp, "rootfs")
            subprocess.run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
                            "bookworm", str(rootfs)], check=True, capture_output=True)
            # package caches and lists are not needed in an image
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
                shutil.rmtree(rootfs / junk, ignore_errors=True)
            partial = tar.with_suffix(".partial")
            subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True)
            partial.replace(tar)
    with open(tar, "rb") as f:
        done = subprocess.run(["podman", "import", "-", LOCAL_BASE], stdin=f, env=podman_env(), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"podman import failed: {done.stderr[-1000:]}")
    return LOCAL_BASE


def base_image(kind: str = "python") -> str:
    """The official base where a registry answers, else the local Debian one (also a shell for the bundle image)."""
    official = OFFICIAL[kind]
    return official if pulled(official) else local_base()


def pip_mounts() -> list[str]:
    """`-v` options that let pip in the build use the host's index configuration and CA certificates."""
    mounts = []
    if Path("/etc/pip.conf").is_file():
        mounts += ["-v", "/etc/pip.conf:/etc/pip.conf:ro"]
    if Path("/etc/xdg/pip").is_dir():  # the whole folder: its pip.conf may name files beside it
        mounts += ["-v", "/etc/xdg/pip:/etc/xdg/pip:ro"]
    cafile = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE") or ssl.get_default_verify_paths().cafile
    if cafile and Path(cafile).is_file():
        # where Debian (both bases) and the pip configuration look for them
        mounts += ["-v", f"{cafile}:/etc/ssl/certs/ca-certificates.crt:ro"]
    return mounts


def build(variant: str, tag: str | None = None, bundle: str | Path | None = None) -> tuple[str, float]:
    """Build one image; returns (tag, seconds)."""
    ensure_podman()
    tag = tag or TAGS[variant]
    dockerfile = DOCKER / f"Dockerfile.{variant}"
    args = ["build", "--format", "docker", "--layers", "-f", str(dockerfile), "-t", tag]
    ignore = DOCKER / f"Dockerfile.{variant}.dockerignore"
    if ignore.is_file():
        args += ["--ignorefile", str(ignore)]
    if variant == "bundle":
        if bundle is None:
            raise ValueError("the bundle image needs --bundle DIR")
        args += ["--build-arg", f"BUSYBOX_IMAGE={base_image('busybox')}"]
        context = DOCKER
    else:
        args += ["--build-arg", f"PYTHON_IMAGE={base_image('python')}", *pip_mounts()]
        context = REPO
    if bundle is not None:
        args += ["--build-context", f"bundle={Path(bundle).resolve()}"]
    start = time.monotonic()
    podman(*args, str(context), capture=False)
    return tag, time.monotonic() - start


def image_size(tag: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="images", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("build", help="build one image")
    one.add_argument("variant", choices=sorted(TAGS))
    one.add_argument("--tag")
    one.add_argument("--bundle", help="model bundle folder (required for `bundle`; bakes it into cpu/gpu)")
    every = sub.add_parser("all", help="the CPU, GPU and bundle images, with their sizes and build times")
    every.add_argument("--bundle", help="model bundle folder for the bundle image")
    sub.add_parser("base", help="make sure the base image exists and print its name")
    args = parser.parse_args(argv)
    try:
        ensure_podman()
        if args.command == "base":
            print(base_image())
            return 0
        if args.command == "build":
            tag, seconds = build(args.variant, args.tag, args.bundle)
            print(f"{tag}: {image_size(tag) / 1e6:.0f} MB, built in {seconds:.0f} s")
            return 0
        for variant in ("cpu", "gpu", "bundle", "api"):
            if variant == "bundle" and not args.bundle:
                print("bundle: skipped (no --bundle DIR / BUNDLE=DIR given)")
                continue
            tag, seconds = build(variant, bundle=args.bundle if variant == "bundle" else None)
            print(f"{tag}: {image_size(tag) / 1e6:.0f} MB, built in {seconds:.0f} s", flush=True)
        return 0
    except Unavailable as exc:
        print(f"images: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
