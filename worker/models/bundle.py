"""Model bundles: a folder with the classifier's ONNX file and a manifest the worker verifies on load.

manifest.json (format "dfd-bundle/1") lists every file with its sha256 and size, the model's
input size, normalisation and labels, the crop it was trained on, the decision threshold(s),
the video aggregation, metrics and how it was trained. Loading checks all of it, so a
tampered, truncated or half-copied bundle is refused with a clear BundleError.
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

from worker.types import ModelInfo

FORMAT = "dfd-bundle/1"
MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"


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
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{manifest_path}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
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

    info = ModelInfo(
        name=str(manifest["name"]),
        version=str(manifest["version"]),
        sha256=hashes[model_file],
        trained=bool(manifest.get("trained", True)),
        demo=bool(manifest.get("demo", False)),
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
    )


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
) -> ModelBundle:
    """Copy `onnx_path` into `folder` as model.onnx, write the manifest, and load it back (verified)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model_path = folder / MODEL_FILE
    if Path(onnx_path).resolve() != model_path.resolve():
        shutil.copyfile(onnx_path, model_path)
    manifest = {
        "format": FORMAT,
        "name": name,
        "version": version,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "trained": trained,
        "demo": demo,
        "files": {MODEL_FILE: {"sha256": file_sha256(model_path), "bytes": model_path.stat().st_size}},
        "model": {
            "file": MODEL_FILE,
            "input_size": int(input_size),
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
            "labels": list(labels),
            "fake_index": int(fake_index),
        },
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
