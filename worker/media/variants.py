"""Edited copies of a clip, as re-uploads and fakes make them: for near-duplicate tests and benchmarks.

Each function takes RGB uint8 frames and returns new frames (even dimensions, ready for
`encode_clip`); `reencode` is the one that writes a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from worker.media.encode import encode_clip


def _even(n: float) -> int:
    return max(2, int(round(n)) // 2 * 2)


def reencode(path: str | Path, frames: Sequence[np.ndarray], fps: int = 25, crf: int = 35) -> Path:
    return encode_clip(path, frames, fps=fps, crf=crf)


def scaled(frames: Sequence[np.ndarray], factor: float) -> list[np.ndarray]:
    h, w = frames[0].shape[:2]
    size = (_even(w * factor), _even(h * factor))
    return [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames]


def cropped(frames: Sequence[np.ndarray], fraction: float) -> list[np.ndarray]:
    """`fraction` of the width and of the height cut away, half from each side."""
    h, w = frames[0].shape[:2]
    dy, dx = int(round(h * fraction / 2)), int(round(w * fraction / 2))
    nh, nw = _even(h - 2 * dy), _even(w - 2 * dx)
    return [np.ascontiguousarray(f[dy : dy + nh, dx : dx + nw]) for f in frames]


def trimmed(frames: Sequence[np.ndarray], fps: float, seconds: float) -> list[np.ndarray]:
    """The first `seconds` dropped."""
    return list(frames[int(round(fps * seconds)) :])


def with_logo(frames: Sequence[np.ndarray], text: str = "NEWS24") -> list[np.ndarray]:
    """A broadcaster's logo in the top-right corner: a white box (about 1/5 of the width) with text."""
    h, w = frames[0].shape[:2]
    bw, bh = _even(w * 0.2), _even(h * 0.1)
    x0, y0 = w - bw - _even(w * 0.02), _even(h * 0.03)
    out = []
    for f in frames:
        img = f.copy()
        box = img[y0 : y0 + bh, x0 : x0 + bw]
        box[:] = (0.35 * box + 0.65 * 255).astype(np.uint8)
        cv2.putText(img, text, (x0 + 2, y0 + bh - max(2, bh // 5)), cv2.FONT_HERSHEY_SIMPLEX, bh / 30, (200, 0, 0), max(1, bh // 12))
        out.append(img)
    return out


def region_swapped(
    frames: Sequence[np.ndarray], boxes: Sequence[tuple[int, int, int, int] | None], shift: int
) -> list[np.ndarray]:
    """A lip-sync stand-in: in frame i the region in box i (x1, y1, x2, y2) is replaced by the
    region in box i + shift of frame i + shift, resized and blended with feathered edges, so
    only that region (e.g. the mouth) changes."""
    out = []
    n = len(frames)
    for i, (f, box) in enumerate(zip(frames, boxes)):
        img = f.copy()
        j = (i + shift) % n
        if box is not None and boxes[j] is not None:
            x1, y1, x2, y2 = box
            sx1, sy1, sx2, sy2 = boxes[j]
            src = cv2.resize(frames[j][sy1:sy2, sx1:sx2], (x2 - x1, y2 - y1)).astype(np.float32)
            mask = np.zeros((y2 - y1, x2 - x1), np.float32)
            cv2.ellipse(mask, ((x2 - x1) // 2, (y2 - y1) // 2), ((x2 - x1) // 2, (y2 - y1) // 2), 0, 0, 360, 1.0, -1)
            mask = cv2.GaussianBlur(mask, (0, 0), max(1.0, (x2 - x1) / 8))[..., None]
            dst = img[y1:y2, x1:x2].astype(np.float32)
            img[y1:y2, x1:x2] = np.clip(mask * src + (1 - mask) * dst, 0, 255).astype(np.uint8)
        out.append(img)
    return out
