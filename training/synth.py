"""`dfd-train synth`: self-blended pseudo-fakes from real face crops.

Self-blended images (Shiohara and Yamasaki, "Detecting Deepfakes with Self-Blended
Images", CVPR 2022): a face is blended with a slightly transformed copy of itself inside a
mask around the face, which leaves the traces every face swap leaves (a blending boundary,
colour and sharpness mismatch, a small misalignment) without any particular generator's
fingerprint. The paper uses 81 landmarks for its mask; we have RetinaFace's five, so the
mask is the convex hull of those five extended up to the brows and down to the chin, then
deformed, blurred and scaled as in the paper.

Each fake keeps its parent's video group and split, so a pseudo-fake never leaks a
training identity into validation or test.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from training.dataset import META_FIELDS, DataError, append_rows, landmarks_of, load_rgb, read_metadata, save_rgb

log = logging.getLogger(__name__)

BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)  # the paper's choice: mostly a full blend


def landmark_mask(shape: tuple[int, int], landmarks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A float32 mask in [0, 1] covering the inner face, from 5 landmarks."""
    h, w = shape
    eyes = landmarks[:2]
    mouth = landmarks[3:5]
    eye_mid, mouth_mid = eyes.mean(0), mouth.mean(0)
    down = mouth_mid - eye_mid  # eye-to-mouth vector: the face's vertical axis and scale
    # brows and forehead above the eyes, chin below the mouth
    across = eyes[1] - eyes[0]  # eye-to-eye vector: the face's horizontal axis
    up_reach, down_reach, side_reach = rng.uniform(0.5, 0.8), rng.uniform(0.4, 0.7), rng.uniform(0.3, 0.5)
    cheeks = np.array([eyes[0] - side_reach * across, eyes[1] + side_reach * across,
                       mouth[0] - 0.5 * side_reach * across, mouth[1] + 0.5 * side_reach * across])
    points = np.vstack([landmarks, cheeks, eyes - up_reach * down, mouth + down_reach * down])
    centre = points.mean(0)
    points = centre + (points - centre) * rng.uniform(1.05, 1.3)
    hull = cv2.convexHull(points.astype(np.float32)).astype(np.int32)
    mask = np.zeros((h, w), np.float32)
    cv2.fillConvexPoly(mask, hull, 1.0)
    mask = elastic_deform(mask, rng)
    # soft boundary: blur with a random kernel, then rescale so the inside is fully 1
    k = int(rng.uniform(0.03, 0.12) * w) | 1
    mask = cv2.GaussianBlur(mask, (k, k), 0)
    if mask.max() > 0:
        mask = np.clip(mask / mask.max(), 0, 1)
    return mask


def elastic_deform(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Smooth random warp of the mask, so the boundary is not a clean polygon."""
    h, w = mask.shape
    alpha, sigma = w * rng.uniform(0.03, 0.08), w * 0.08
    dx = cv2.GaussianBlur(rng.uniform(-1, 1, (h, w)).astype(np.float32), (0, 0), sigma)
    dy = cv2.GaussianBlur(rng.uniform(-1, 1, (h, w)).astype(np.float32), (0, 0), sigma)
    dx *= alpha / max(np.abs(dx).max(), 1e-6)
    dy *= alpha / max(np.abs(dy).max(), 1e-6)
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(mask, xs + dx, ys + dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def colour_transform(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """RGB shift, hue/saturation/value shift, brightness and contrast: the colour mismatch of a swap."""
    x = image.astype(np.float32)
    x += rng.uniform(-20, 20, 3)
    hsv = cv2.cvtColor(np.clip(x, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-6, 6)) % 180
    hsv[..., 1] *= rng.uniform(0.85, 1.15)
    hsv[..., 2] *= rng.uniform(0.9, 1.1)
    x = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    contrast, brightness = rng.uniform(0.85, 1.15), rng.uniform(-15, 15)
    x = (x - x.mean()) * contrast + x.mean() + brightness
    return np.clip(x, 0, 255).astype(np.uint8)


def sharpness_transform(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur or sharpen: the resolution mismatch between a pasted face and its frame."""
    if rng.random() < 0.5:
        return cv2.GaussianBlur(image, (0, 0), rng.uniform(0.6, 1.6))
    blurred = cv2.GaussianBlur(image, (0, 0), 1.5)
    amount = rng.uniform(0.3, 1.0)
    return np.clip(image.astype(np.float32) * (1 + amount) - blurred.astype(np.float32) * amount, 0, 255).astype(np.uint8)


def shift_resize(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Slight anisotropic resize and shift about the centre: the misalignment of a swap."""
    h, w = image.shape[:2]
    sx, sy = rng.uniform(0.95, 1.05, 2)
    tx, ty = rng.uniform(-0.03, 0.03, 2) * (w, h)
    m = np.array([[sx, 0, (1 - sx) * w / 2 + tx], [0, sy, (1 - sy) * h / 2 + ty]], np.float32)
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def self_blend(image: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One self-blended image from an RGB uint8 face crop and its 5 landmarks: (fake, mask)."""
    source, target = image.copy(), image.copy()
    if rng.random() < 0.5:
        source = colour_transform(source, rng)
    else:
        target = colour_transform(target, rng)
    if rng.random() < 0.5:
        source = sharpness_transform(source, rng)
    else:
        target = sharpness_transform(target, rng)
    source = shift_resize(source, rng)
    mask = landmark_mask(image.shape[:2], landmarks, rng) * rng.choice(BLEND_RATIOS)
    m = mask[..., None]
    fake = source.astype(np.float32) * m + target.astype(np.float32) * (1 - m)
    return np.clip(np.rint(fake), 0, 255).astype(np.uint8), mask


def _rng_for(crop: str, k: int, seed: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{crop}|{k}|{seed}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def synthesize(folder: str | Path, per_real: int = 1, seed: int = 0, splits=("train", "val", "test"), progress: bool = True) -> int:
    """Add `per_real` pseudo-fakes for every real crop of `folder`; returns how many were added.

    Deterministic and resumable: fakes already listed in metadata.csv are not made again.
    """
    folder = Path(folder)
    rows = read_metadata(folder)
    existing = {r["crop"] for r in rows}
    reals = [r for r in rows if r["label"] == "real" and r["split"] in splits]
    if not reals:
        raise DataError(f"{folder} has no real crops to blend (labels present: {sorted({r['label'] for r in rows})})")
    added, no_landmarks, batch = 0, 0, []
    for row in tqdm(reals, desc="synth", unit="crop", disable=not progress):
        lm = landmarks_of(row)
        if lm is None:
            no_landmarks += 1
            continue
        for k in range(per_real):
            rel = f"crops/synth/{Path(row['crop']).parent.name}/{Path(row['crop']).stem}_sbi{k}{Path(row['crop']).suffix}"
            if rel in existing:
                continue
            fake, _ = self_blend(load_rgb(folder / row["crop"]), lm, _rng_for(row["crop"], k, seed))
            save_rgb(folder / rel, fake)
            batch.append(row | {"crop": rel, "label": "fake", "origin": "synth", "source": row["crop"], "video": f"{row['video']}#sbi{k}"})
            added += 1
        if len(batch) >= 256:
            append_rows(folder / "metadata.csv", META_FIELDS, batch)
            batch = []
    append_rows(folder / "metadata.csv", META_FIELDS, batch)
    if no_landmarks:
        log.warning("%d real crops have no landmarks recorded and were not blended", no_landmarks)
    return added


def add_arguments(p) -> None:
    p.add_argument("data", type=Path, help="a folder made by `dfd-train prepare`")
    p.add_argument("--per-real", type=int, default=1, help="pseudo-fakes per real crop")
    p.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    added = synthesize(args.data, args.per_real, args.seed)
    print(f"added {added} self-blended pseudo-fakes to {args.data}")
    return 0
