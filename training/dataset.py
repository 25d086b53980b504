"""The prepared data set on disk: the crop metadata table, splits, and a torch Dataset over it.

A prepared folder holds `crops/` (one image per face), `metadata.csv` (one row per crop),
`videos.csv` (one row per source video and what became of it) and `prepare.json` (the crop
settings, which the exported bundle must repeat so the worker crops as training did).
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

LABELS = ("real", "fake")  # index = class id; the bundle's fake_index is 1
SPLITS = ("train", "val", "test")

META_FIELDS = [
    "crop",  # image path relative to the prepared folder
    "video",  # id of the source video (content sha256, or a name for images / synth)
    "group",  # split unit: identity, source video, ... (defaults to the video)
    "split",
    "label",
    "origin",  # video, image or synth
    "source",  # original file path (or the parent crop for synth)
    "frame_index",
    "time_s",
    "face_index",
    "x1", "y1", "x2", "y2",  # face box in the original frame's pixels
    "det_score",
    # 5 landmarks in crop pixels (left eye, right eye, nose, mouth left, mouth right); synth needs them
    *[f"lm{i}{axis}" for i in range(5) for axis in "xy"],
]
VIDEO_FIELDS = ["video", "path", "label", "group", "split", "status", "reason", "frames", "faces"]


class DataError(ValueError):
    """Input data that cannot be used, with a message that says what to fix."""


def split_for(group: str, val_fraction: float, test_fraction: float) -> str:
    """Deterministic split of a group: the same group always lands in the same split."""
    u = int.from_bytes(hashlib.sha256(group.encode()).digest()[:8], "big") / 2**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


# --- CSV tables --------------------------------------------------------------------------


def read_table(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def append_rows(path: Path, fields: list[str], rows: Iterable[dict]) -> None:
    """Append rows, writing the header first when the file is new; flushed to disk at once."""
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(rows)


def write_table(path: Path, fields: list[str], rows: Iterable[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def read_metadata(folder: str | Path) -> list[dict[str, str]]:
    folder = Path(folder)
    rows = read_table(folder / "metadata.csv")
    if not rows:
        raise DataError(f"{folder} holds no prepared crops (no metadata.csv rows): run `dfd-train prepare` first")
    return rows


def read_prepare_info(folder: str | Path) -> dict:
    path = Path(folder) / "prepare.json"
    return json.loads(path.read_text()) if path.exists() else {}


def landmarks_of(row: dict[str, str]) -> np.ndarray | None:
    """The row's 5 crop-space landmarks [5, 2], or None when they were not recorded."""
    values = [row.get(f"lm{i}{axis}", "") for i in range(5) for axis in "xy"]
    if any(v in ("", None) for v in values):
        return None
    return np.array(values, np.float32).reshape(5, 2)


def select(rows: list[dict[str, str]], split: str) -> list[dict[str, str]]:
    return [r for r in rows if r["split"] == split]


def check_two_classes(rows: list[dict[str, str]], what: str) -> None:
    """Training and evaluation need both classes; say which one is missing and how to get it."""
    present = {r["label"] for r in rows}
    for label in LABELS:
        if label not in present:
            hint = (
                " Run `dfd-train synth` to make pseudo-fakes from the real crops."
                if label == "fake"
                else " Add real videos (folder real/ or label=real in the manifest)."
            )
            raise DataError(f"the {what} has no '{label}' crops ({len(rows)} crops, all {sorted(present)}).{hint}")


def load_rgb(path: str | Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def save_rgb(path: Path, image: np.ndarray, jpeg_quality: int = 95) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if path.suffix.lower() in (".jpg", ".jpeg") else []
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params):
        raise OSError(f"could not write {path}")


# --- torch Dataset -----------------------------------------------------------------------


class CropDataset:
    """Crops as model inputs: `{"pixel_values": float32 [3,S,S], "labels": int}` per item.

    Normalisation matches the bundle's (mean/std on 0..1 RGB), so training sees exactly what
    the worker's FakeClassifier feeds the ONNX model. `augment` is applied to uint8 RGB
    before normalising (training only).
    """

    def __init__(self, folder: str | Path, rows: list[dict[str, str]], input_size: int, mean, std, augment=None):
        self.folder = Path(folder)
        self.rows = rows
        self.input_size = input_size
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        self.augment = augment
        self.labels = np.array([LABELS.index(r["label"]) for r in rows], np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def image(self, i: int) -> np.ndarray:
        image = load_rgb(self.folder / self.rows[i]["crop"])
        if image.shape[0] != self.input_size or image.shape[1] != self.input_size:
            interpolation = cv2.INTER_AREA if image.shape[0] > self.input_size else cv2.INTER_LINEAR
            image = cv2.resize(image, (self.input_size, self.input_size), interpolation=interpolation)
        return image

    def __getitem__(self, i: int) -> dict:
        import torch

        image = self.image(i)
        if self.augment is not None:
            # Draw from torch's generator: the DataLoader seeds it differently in every worker
            # process and epoch, where a numpy Generator would be copied into each worker as is.
            rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
            image = self.augment(image, rng)
        x = (image.astype(np.float32) / 255.0 - self.mean) / self.std
        return {"pixel_values": torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), "labels": int(self.labels[i])}
