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


# Early decision: every value an unclassified frame could take that can make the video score
# extreme. Mean, max and topk_mean only grow with each frame score, so 0 and 1 bound them.
# confident_mean is not monotone (one more confident fake can lower the mean of the
# confident fakes), but within each of its three bands (< 0.2, 0.2..0.8, > 0.8) the score
# moves linearly with a frame's score, so the extremes lie at the bands' ends.
_BAND_ENDS = {
    "mean": (0.0, 1.0),
    "max": (0.0, 1.0),
    "topk_mean": (0.0, 1.0),
    "confident_mean": (0.0, CONFIDENT_REAL - 1e-9, CONFIDENT_REAL, CONFIDENT_FAKE, CONFIDENT_FAKE + 1e-9, 1.0),
}
# confident_mean's bound enumerates how many unknown frames sit at each band end: C(m + 5, 5)
# cases, 252 for 5 unknown frames; beyond this many unknown frames it does not decide early.
EARLY_MAX_UNKNOWN = 6


def score_bounds(known: np.ndarray | list[float], unknown: int, strategy: str) -> tuple[float, float] | None:
    """The lowest and highest video score that `unknown` more frame scores (each in [0, 1])
    could give, with `known` frame scores already in hand; None when not computed."""
    known = np.asarray(known, dtype=np.float64).ravel()
    if unknown == 0:
        score = aggregate(known, strategy)
        return score, score
    ends = _BAND_ENDS.get(strategy)
    if ends is None or unknown < 0:
        return None
    if len(ends) == 2:
        low = aggregate(np.concatenate([known, np.zeros(unknown)]), strategy)
        high = aggregate(np.concatenate([known, np.ones(unknown)]), strategy)
        return low, high
    if unknown > EARLY_MAX_UNKNOWN:
        return None
    values = [aggregate(np.concatenate([known, np.repeat(ends, counts)]), strategy) for counts in _compositions(unknown, len(ends))]
    return min(values), max(values)


def early_label(known: np.ndarray | list[float], unknown: int, strategy: str, threshold: float) -> tuple[bool, float] | None:
    """(is_fake, bound) when the verdict no longer depends on the `unknown` frames left: fake
    with the lowest score they could give (>= threshold), or real with the highest (< threshold).
    None while either label is still possible. Exact: never a label full scoring would not give."""
    bounds = score_bounds(known, unknown, strategy)
    if bounds is None:
        return None
    low, high = bounds
    if low >= threshold:
        return True, low
    if high < threshold:
        return False, high
    return None


def _compositions(total: int, parts: int):
    """Every way to put `total` identical items into `parts` ordered bins, as count tuples."""
    if parts == 1:
        yield (total,)
        return
    for first in range(total + 1):
        for rest in _compositions(total - first, parts - 1):
            yield (first, *rest)
