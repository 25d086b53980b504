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

from training.augment import source_look

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
    "dataset",  # where the face comes from (a data set, a camera, a site): evaluation reports per value
    "manipulation",  # real, self-blend, face-swap, or what the manifest names
    "donor",  # face swap: the crop whose face was pasted in (the row's `source` is the target)
]
VIDEO_FIELDS = ["video", "path", "label", "group", "split", "status", "reason", "frames", "faces"]


class DataError(ValueError):
    """Input data that cannot be used, with a message that says what to fix."""


def source_of(row: dict[str, str]) -> str:
    return row.get("dataset") or "default"


def manipulation_of(row: dict[str, str]) -> str:
    """The row's manipulation; folders prepared before the column existed get real / self-blend / fake."""
    if row.get("manipulation"):
        return row["manipulation"]
    if row["label"] == "real":
        return "real"
    return "self-blend" if row.get("origin") == "synth" else "fake"


def _split_order(item: tuple[str, list]) -> int:
    return SPLITS.index(item[0]) if item[0] in SPLITS else len(SPLITS)


def check_groups(rows: list[dict[str, str]], where: str = "metadata.csv") -> None:
    """Refuse a table where one group sits in two splits (its faces would leak across them),
    naming for each such group every split with its crop count and an example crop."""
    splits: dict[str, dict[str, list[str]]] = {}
    for row in rows:
        splits.setdefault(row["group"], {}).setdefault(row["split"], []).append(row["crop"])
    clashes = [
        f"group {group!r} is in " + " and ".join(f"{split} ({len(crops)} crops, e.g. {crops[0]})" for split, crops in sorted(by.items(), key=_split_order))
        for group, by in splits.items() if len(by) > 1
    ]
    if clashes:
        shown = "\n  ".join(clashes[:20]) + ("\n  ..." if len(clashes) > 20 else "")
        raise DataError(f"{where}: {len(clashes)} group(s) in two splits:\n  {shown}")


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
    """Append rows, writing the header first when the file is new; flushed to disk at once.

    A table written before a column was added is rewritten once with the new header."""
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        if header != fields:
            write_table(path, fields, read_table(path))
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
    """The prepared crops' rows, sorted by crop name: `prepare` writes a video's rows when its
    decode finishes, in whatever order the thread pool finishes them, and what is drawn from the
    rows (blend landmarks for patches, face-swap donors, training batches) must not depend on it."""
    folder = Path(folder)
    rows = read_table(folder / "metadata.csv")
    if not rows:
        raise DataError(f"{folder} holds no prepared crops (no metadata.csv rows): run `dfd-train prepare` first")
    return sorted(rows, key=lambda r: r["crop"])


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

    Normalisation is the worker's own (`worker.models.classifier.normalise`, with the bundle's
    mean/std), so training sees exactly what the FakeClassifier feeds the ONNX model.
    `augment` is applied to uint8 RGB before normalising (training only). With
    `fresh_blends`, a self-blend row is blended anew from its parent crop every time it is
    drawn (as the SBI paper does), so the model never sees the same pseudo-fake twice;
    `blend_strength` (set by a curriculum as training goes) scales how strong those blends are.
    """

    def __init__(self, folder: str | Path, rows: list[dict[str, str]], input_size: int, mean, std, augment=None,
                 fresh_blends: bool = False):
        from worker.models.classifier import norm_constants

        self.folder = Path(folder)
        self.rows = rows
        self.input_size = input_size
        self.scale, self.shift = norm_constants(mean, std)
        self.augment = augment
        self.fresh_blends = fresh_blends
        self.blend_strength = 1.0
        self.labels = np.array([LABELS.index(r["label"]) for r in rows], np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def image(self, i: int) -> np.ndarray:
        return self._resize(load_rgb(self.folder / self.rows[i]["crop"]))

    def _resize(self, image: np.ndarray) -> np.ndarray:
        if image.shape[0] != self.input_size or image.shape[1] != self.input_size:
            interpolation = cv2.INTER_AREA if image.shape[0] > self.input_size else cv2.INTER_LINEAR
            image = cv2.resize(image, (self.input_size, self.input_size), interpolation=interpolation)
        return image

    def __getitem__(self, i: int) -> dict:
        import torch

        # Draw from torch's generator: the DataLoader seeds it differently in every worker
        # process and epoch, where a numpy Generator would be copied into each worker as is.
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item())) if self.augment or self.fresh_blends else None
        row = self.rows[i]
        # a source's look goes on the real pixels before any blend, so fakes carry it under the blend
        look = self.augment is not None and self.augment.source > 0 and rng.random() < self.augment.source
        if self.fresh_blends and row.get("manipulation") == "self-blend" and landmarks_of(row) is not None:
            from training.synth import self_blend

            parent = load_rgb(self.folder / row["source"])
            parent = source_look(parent, rng) if look else parent
            image = self._resize(self_blend(parent, landmarks_of(row), rng, self.blend_strength)[0])
        else:
            image = self.image(i)
            if look and row.get("label") == "real":
                image = source_look(image, rng)
        if self.augment is not None:
            image = self.augment(image, rng)
        from worker.models.classifier import normalise

        x = normalise(np.ascontiguousarray(image)[None], self.scale, self.shift)[0]
        return {"pixel_values": torch.from_numpy(x), "labels": int(self.labels[i])}


def data_fingerprint(folder: str | Path, rows: list[dict[str, str]]) -> dict:
    """What a model was trained on, in a form two runs can compare: a hash over every listed
    crop's name, label, split and bytes, plus counts. Equal fingerprints mean the same data."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for row in sorted(rows, key=lambda r: r["crop"]):
        digest.update(f"{row['crop']}|{row['label']}|{row['split']}|{row['group']}\n".encode())
        digest.update(hashlib.sha256((folder / row["crop"]).read_bytes()).digest())
    counts: dict[str, int] = {}
    for row in rows:
        key = f"{row['split']}/{row['label']}"
        counts[key] = counts.get(key, 0) + 1
    return {"sha256": digest.hexdigest(), "crops": len(rows), "by_split_label": dict(sorted(counts.items()))}
