"""The demo bundle's data and cache (the full build takes minutes: `dfd-train demo` runs it)."""

from __future__ import annotations

import shutil

import pytest

from training import demo
from worker.models.bundle import load_bundle, write_bundle
from worker.settings import Settings


def test_registry_faces_are_found_by_the_worker_detector():
    from worker.models.retinaface import FaceDetector

    stills = demo._still_faces()
    assert stills[0][0] == "astronaut" and len(stills) == 101
    found = FaceDetector(Settings()).detect([s[1] for s in stills])
    assert len(found[0]) == 1  # the astronaut
    assert sum(1 for faces in found[1:] if faces) >= 60  # most upscaled LFW faces
    assert {s[4] for s in stills[1:]} == {"train", "val", "test"}


def test_a_valid_cached_demo_bundle_is_reused(tmp_path, untrained_bundle, monkeypatch):
    cached = tmp_path / f"demo-bundle-{demo.DEMO_VERSION}"
    write_bundle(cached, untrained_bundle.model_path, name="x-DEMO", version="demo", input_size=untrained_bundle.input_size,
                 mean=untrained_bundle.mean, std=untrained_bundle.std, labels=untrained_bundle.labels,
                 fake_index=untrained_bundle.fake_index, threshold=0.5, demo=True)
    before = (cached / "manifest.json").read_bytes()

    def no_build(*args, **kwargs):
        raise AssertionError("a valid cached demo bundle must not be rebuilt")

    monkeypatch.setattr(demo, "build_demo", no_build)
    assert demo.ensure_demo_bundle(tmp_path) == cached
    assert (cached / "manifest.json").read_bytes() == before and load_bundle(cached).info.demo


def test_a_bundle_not_marked_demo_is_not_taken_for_the_demo(tmp_path, untrained_bundle, monkeypatch):
    shutil.copytree(untrained_bundle.path, tmp_path / f"demo-bundle-{demo.DEMO_VERSION}")

    class Rebuild(Exception):
        pass

    def build(work, **kwargs):
        raise Rebuild(str(work))  # stop here: the real build takes minutes

    monkeypatch.setattr(demo, "build_demo", build)
    with pytest.raises(Rebuild, match=f"demo-work-{demo.DEMO_VERSION}"):
        demo.ensure_demo_bundle(tmp_path)
