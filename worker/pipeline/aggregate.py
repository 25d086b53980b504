"""From per-frame fake probabilities to one video score.

Shared by the worker (verdicts) and training (video-level metrics), so a threshold tuned
offline means the same thing online. A frame's score is the highest score among its faces:
one manipulated face is enough to make the frame fake.
"""

from __future__ import annotations

import math

import numpy as np

STRATEGIES = ("mean", "max", "topk_mean", "confident_mean")

# topk_mean keeps this fraction of the frames (at least one): robust to a few noisy frames
# but still sensitive to a manipulation that shows in only part of the clip.
TOPK_FRACTION = 0.25

# The DFDC winner's "confident strategy" (Seferbekov, 2020), written for 32 frames: if more
# than 1/2.5 of the frames AND more than 11 of 32 are confidently fake (> 0.8), average
# only those; else if over 90% are confidently real (< 0.2), average those; else the mean.
CONFIDENT_FAKE = 0.8
CONFIDENT_REAL = 0.2
CONFIDENT_MIN_FRACTION = 11 / 32


def aggregate(frame_scores: np.ndarray | list[float], strategy: str) -> float:
    """Video score in [0, 1] from frame scores; raises ValueError on an unknown strategy or no scores."""
    scores = np.asarray(frame_scores, dtype=np.float64).ravel()
    if scores.size == 0:
        raise ValueError("no frame scores to aggregate")
    if strategy == "mean":
        return float(scores.mean())
    if strategy == "max":
        return float(scores.max())
    if strategy == "topk_mean":
        k = max(1, math.ceil(TOPK_FRACTION * scores.size))
        return float(np.sort(scores)[-k:].mean())
    if strategy == "confident_mean":
        n = scores.size
        fakes = scores[scores > CONFIDENT_FAKE]
        if fakes.size > n // 2.5 and fakes.size > CONFIDENT_MIN_FRACTION * n:
            return float(fakes.mean())
        reals = scores[scores < CONFIDENT_REAL]
        if reals.size > 0.9 * n:
            return float(reals.mean())
        return float(scores.mean())
    raise ValueError(f"unknown aggregation {strategy!r}; choose one of {', '.join(STRATEGIES)}")


def frame_scores(frame_ids: np.ndarray | list[int], face_scores: np.ndarray | list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame scores (max over each frame's faces): returns (unique frame ids, scores)."""
    ids = np.asarray(frame_ids)
    scores = np.asarray(face_scores, dtype=np.float64)
    if ids.size == 0:
        return ids, scores
    uniq, inverse = np.unique(ids, return_inverse=True)
    out = np.full(uniq.size, -np.inf)
    np.maximum.at(out, inverse, scores)
    return uniq, out
