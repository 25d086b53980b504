"""`dfd-train synth`: self-blended pseudo-fakes from real face crops.

Self-blended images (Shiohara and Yamasaki, "Detecting Deepfakes with Self-Blended
Images", CVPR 2022): a face is blended with a slightly transformed copy of itself inside a
mask around the face, which leaves the traces every face swap leaves (a blending boundary,
colour and sharpness mismatch, a small misalignment) without any particular generator's
fingerprint. The paper uses 81 landmarks for its mask; we have RetinaFace's five, so the
mask is the convex hull of those five extended up to the brows and down to the chin, then
deformed, blurred and scaled as in the paper.

`--method faceswap` makes the second family, a classical face swap between two different
identities (groups) of the same split: the donor's face is warped onto the target by the
similarity transform between their 5 landmarks, its colour matched to the target's (Reinhard
transfer in Lab), pasted inside an elliptic or hull mask by Poisson or alpha blending, and
the result blurred and recompressed at random. Donor and target are recorded.

Each fake keeps its parent's (for a face swap: its target's) group and split, so a
pseudo-fake never leaks a training identity into validation or test; a donor always comes
from the same split.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from training.augment import jpeg
from training.dataset import (
    META_FIELDS,
    DataError,
    append_rows,
    landmarks_of,
    load_rgb,
    read_metadata,
    read_prepare_info,
    save_rgb,
    source_of,
)

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


def colour_transform(image: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """RGB shift, hue/saturation/value shift, brightness and contrast: the colour mismatch of a swap.
    `strength` scales every change (1: the paper's ranges; more: an easier blend to learn from)."""
    s = strength
    x = image.astype(np.float32)
    x += rng.uniform(-20, 20, 3) * s
    hsv = cv2.cvtColor(np.clip(x, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-6, 6) * s) % 180
    hsv[..., 1] *= 1 + (rng.uniform(0.85, 1.15) - 1) * s
    hsv[..., 2] *= 1 + (rng.uniform(0.9, 1.1) - 1) * s
    x = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    contrast, brightness = 1 + (rng.uniform(0.85, 1.15) - 1) * s, rng.uniform(-15, 15) * s
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


def blend_pair(image: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(source, target): two differently transformed copies of one image. Each of the colour and
    the sharpness change goes to one of the two at random (the paper's choice), and the source
    is slightly resized and shifted; the target is the whole image, changed or not."""
    source, target = image.copy(), image.copy()
    if rng.random() < 0.5:
        source = colour_transform(source, rng, strength)
    else:
        target = colour_transform(target, rng, strength)
    if rng.random() < 0.5:
        source = sharpness_transform(source, rng)
    else:
        target = sharpness_transform(target, rng)
    return shift_resize(source, rng), target


def self_blend(image: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator,
               strength: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """One self-blended image from an RGB uint8 face crop and its 5 landmarks: (fake, mask).

    The fake is the target outside the mask, the source inside it, and a mix on its soft edge.
    `strength` above 1 (a curriculum's first steps) scales the colour change and always blends
    fully; at 1 (what `synth` stores) it is the paper's recipe."""
    source, target = blend_pair(image, rng, strength)
    mask = landmark_mask(image.shape[:2], landmarks, rng)
    ratio = rng.choice(BLEND_RATIOS)
    mask = mask * (1.0 if strength > 1 else ratio)
    m = mask[..., None]
    fake = source.astype(np.float32) * m + target.astype(np.float32) * (1 - m)
    return np.clip(np.rint(fake), 0, 255).astype(np.uint8), mask


def _rng_for(crop: str, k: int, seed: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{crop}|{k}|{seed}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


# --- face swap ------------------------------------------------------------------------------


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 similarity transform (rotation, uniform scale, shift) taking landmarks src onto dst."""
    matrix, _ = cv2.estimateAffinePartial2D(src.astype(np.float32), dst.astype(np.float32), method=cv2.LMEDS)
    if matrix is None:  # degenerate landmarks: fall back to the eye-to-eye transform
        matrix = cv2.estimateAffinePartial2D(src[:2].astype(np.float32), dst[:2].astype(np.float32))[0]
    return matrix


def ellipse_mask(shape: tuple[int, int], landmarks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A filled ellipse over the inner face (eyes to below the mouth), uint8 0/1."""
    eyes, mouth = landmarks[:2].mean(0), landmarks[3:5].mean(0)
    centre = (eyes + mouth) / 2 + (mouth - eyes) * rng.uniform(-0.05, 0.15)
    height = np.linalg.norm(mouth - eyes) * rng.uniform(1.5, 1.9)
    width = np.linalg.norm(landmarks[1] - landmarks[0]) * rng.uniform(1.6, 2.1)
    angle = np.degrees(np.arctan2(*(landmarks[1] - landmarks[0])[::-1]))
    mask = np.zeros(shape, np.uint8)
    cv2.ellipse(mask, (int(centre[0]), int(centre[1])), (max(1, int(width / 2)), max(1, int(height / 2))), angle, 0, 360, 1, -1)
    return mask


def hull_mask(shape: tuple[int, int], landmarks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The 5 landmarks' hull pushed out to brows, cheeks and chin, uint8 0/1 (no deformation)."""
    eyes, mouth = landmarks[:2], landmarks[3:5]
    down, across = mouth.mean(0) - eyes.mean(0), eyes[1] - eyes[0]
    points = np.vstack([landmarks, eyes - rng.uniform(0.4, 0.6) * down, mouth + rng.uniform(0.3, 0.5) * down,
                        eyes[0] - 0.35 * across, eyes[1] + 0.35 * across])
    mask = np.zeros(shape, np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(points.astype(np.float32)).astype(np.int32), 1)
    return mask


def colour_transfer(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Reinhard et al. (2001): match the source's Lab mean and spread inside the mask to the target's."""
    inside = mask.astype(bool)
    if inside.sum() < 4:
        return source
    src = cv2.cvtColor(source, cv2.COLOR_RGB2LAB).astype(np.float32)
    dst = cv2.cvtColor(target, cv2.COLOR_RGB2LAB).astype(np.float32)
    s_mean, s_std = src[inside].mean(0), src[inside].std(0) + 1e-3
    d_mean, d_std = dst[inside].mean(0), dst[inside].std(0) + 1e-3
    out = (src - s_mean) / s_std * d_std + d_mean
    return cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def face_swap(target: np.ndarray, target_lm: np.ndarray, donor: np.ndarray, donor_lm: np.ndarray,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The donor's face on the target's head: (fake RGB uint8, the blend mask float32 in [0, 1])."""
    h, w = target.shape[:2]
    warped = cv2.warpAffine(donor, similarity(donor_lm, target_lm), (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    mask = (ellipse_mask if rng.random() < 0.5 else hull_mask)((h, w), target_lm, rng)
    warped = colour_transfer(warped, target, mask)
    ys, xs = np.nonzero(mask)
    if rng.random() < 0.5 and len(xs) and xs.min() > 0 and ys.min() > 0 and xs.max() < w - 1 and ys.max() < h - 1:
        centre = (int((xs.min() + xs.max() + 1) // 2), int((ys.min() + ys.max() + 1) // 2))
        fake = cv2.seamlessClone(warped, target, mask * 255, centre, cv2.NORMAL_CLONE)
        soft = mask.astype(np.float32)
    else:  # alpha blending with a feathered edge
        k = int(rng.uniform(0.04, 0.12) * w) | 1
        soft = cv2.GaussianBlur(mask.astype(np.float32), (k, k), 0)
        fake = np.clip(np.rint(warped * soft[..., None] + target * (1 - soft[..., None])), 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        fake = cv2.GaussianBlur(fake, (0, 0), rng.uniform(0.3, 1.0))
    if rng.random() < 0.5:
        fake = jpeg(fake, int(rng.integers(50, 95)))
    return fake, soft


def faceswap_pairs(reals: list[dict], per_real: int, seed: int, identity) -> list[tuple[dict, dict, int]]:
    """(target row, donor row, k) for each real crop: a donor of another identity from the same
    split, one donor identity per target video and k (a swapped video shows one other person)."""
    by_split: dict[str, dict[str, list[dict]]] = {}
    for row in reals:
        by_split.setdefault(row["split"], {}).setdefault(identity(row), []).append(row)
    pairs = []
    for row in reals:
        identities = by_split[row["split"]]
        others = sorted(i for i in identities if i != identity(row))
        if not others:
            continue
        for k in range(per_real):
            donor_id = others[_rng_for(row["video"], k, seed).integers(len(others))]
            donors = identities[donor_id]
            pairs.append((row, donors[_rng_for(row["crop"], k, seed).integers(len(donors))], k))
    return pairs


# --- the command --------------------------------------------------------------------------------

METHODS = ("sbi", "faceswap")
MANIPULATION = {"sbi": "self-blend", "faceswap": "face-swap"}


def synthesize(folder: str | Path, per_real: int = 1, seed: int = 0, splits=("train", "val", "test"), progress: bool = True,
               method: str = "sbi", identity=None) -> int:
    """Add `per_real` pseudo-fakes for every real crop of `folder`; returns how many were added.

    `method`: "sbi" (self-blend) or "faceswap" (donor from another identity of the split;
    `identity(row)` names a row's identity, by default its group). Deterministic and
    resumable: fakes already listed in metadata.csv are not made again. The method, seed and
    count are recorded in prepare.json, which the trained model and its bundle repeat.
    """
    if method not in METHODS:
        raise DataError(f"unknown synth method {method!r}: one of {', '.join(METHODS)}")
    identity = identity or (lambda r: r["group"])
    folder = Path(folder)
    rows = read_metadata(folder)
    existing = {r["crop"] for r in rows}
    reals = [r for r in rows if r["label"] == "real" and r["split"] in splits]
    if not reals:
        raise DataError(f"{folder} has no real crops to blend (labels present: {sorted({r['label'] for r in rows})})")
    no_landmarks = sum(1 for r in reals if landmarks_of(r) is None)
    reals = [r for r in reals if landmarks_of(r) is not None]
    tag = "sbi" if method == "sbi" else "swap"
    if method == "sbi":
        jobs = [(row, None, k) for row in reals for k in range(per_real)]
    else:
        jobs = faceswap_pairs(reals, per_real, seed, identity)
        if not jobs and reals:
            raise DataError(f"{folder}: a face swap needs two identities (groups) in one split; none has two")
    added, batch = 0, []
    for row, donor, k in tqdm(jobs, desc=f"synth {method}", unit="crop", disable=not progress):
        crop = Path(row["crop"])
        rel = f"crops/synth/{crop.parent.name}/{crop.stem}_{tag}{k}{crop.suffix}"
        if rel in existing:
            continue
        rng = _rng_for(row["crop"], k, seed if method == "sbi" else seed + 7919)
        target = load_rgb(folder / row["crop"])
        if donor is None:
            fake, _ = self_blend(target, landmarks_of(row), rng)
            extra = {"donor": ""}
        else:
            picture = load_rgb(folder / donor["crop"])
            if picture.shape != target.shape:
                picture = cv2.resize(picture, target.shape[1::-1])
            fake, _ = face_swap(target, landmarks_of(row), picture, landmarks_of(donor), rng)
            extra = {"donor": donor["crop"]}
        save_rgb(folder / rel, fake)
        batch.append(row | extra | {"crop": rel, "label": "fake", "origin": "synth", "source": row["crop"],
                                    "video": f"{row['video']}#{tag}{k}", "dataset": source_of(row),
                                    "manipulation": MANIPULATION[method]})
        added += 1
        if len(batch) >= 256:
            append_rows(folder / "metadata.csv", META_FIELDS, batch)
            batch = []
    append_rows(folder / "metadata.csv", META_FIELDS, batch)
    if no_landmarks:
        log.warning("%d real crops have no landmarks recorded and were not used", no_landmarks)
    if added:
        record_synth(folder, {"method": method, "per_real": per_real, "seed": seed, "splits": list(splits), "added": added})
    return added


def record_synth(folder: Path, entry: dict) -> None:
    import json

    info = read_prepare_info(folder)
    info.setdefault("synth", []).append(entry)
    (folder / "prepare.json").write_text(json.dumps(info, indent=2))


def add_arguments(p) -> None:
    p.add_argument("data", type=Path, help="a folder made by `dfd-train prepare`")
    p.add_argument("--method", choices=METHODS, default="sbi",
                   help="sbi: self-blended images; faceswap: a classical face swap between two identities (groups) of one split")
    p.add_argument("--per-real", type=int, default=1, help="pseudo-fakes per real crop")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (the same seed gives the same fakes)")


def run(args) -> int:
    added = synthesize(args.data, args.per_real, args.seed, method=args.method)
    print(f"added {added} {MANIPULATION[args.method]} pseudo-fakes to {args.data}")
    return 0
