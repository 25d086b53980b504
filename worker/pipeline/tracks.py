"""Face tracks: the same person's face linked across a video's sampled frames.

Classification is most of a video's cost and grows with faces: a six-person panel sampled
at 10 frames is 40-60 crops. The same face, one second later, says little new, so the
scanner links faces into tracks, classifies each track in at most `DFD_CROPS_PER_FACE`
frames spread over it, and judges the video track by track: a fake face among real ones
is not averaged away by them (the video score is the highest track score).

Linking is greedy over consecutive sampled frames: a face continues the track whose last
box overlaps it most (IoU), or, when the face moved more than boxes overlap, whose last
box centre is near and of a similar size. Pure logic over boxes: no image is read here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from worker.pipeline.aggregate import aggregate, score_bounds

# A face continues a track when its box overlaps the track's last box by this IoU ...
LINK_IOU = 0.3
# ... or when its centre lies within this fraction of the larger box side of the track's
# last centre and the sides differ by at most LINK_SIZE_RATIO (faces move between samples
# ~1 s apart more than their boxes overlap).
LINK_CENTRE = 0.6
LINK_SIZE_RATIO = 1.5
# A track unseen for more than this many sampled frames ends (a face hidden by the
# DFD_MAX_FACES_PER_FRAME cap or turned away for a few frames continues its track). Measured
# on the six-person benchmark clips (6 heads, 4 kept per frame): a gap of 2 split their six
# heads into 7-8 tracks, 4 gives 6 (one clip 7), as 6 and 9 do.
MAX_GAP = 4
# Tracks seen in fewer sampled frames than this do not decide the video score while a
# longer track exists: a detector's one-frame false positive must not flag a video alone.
MIN_TRACK_FRAMES = 2


@dataclass
class Track:
    """One face across frames: `members` are (frame position, detection index) pairs in order."""

    members: list[tuple[int, int]] = field(default_factory=list)
    last_box: np.ndarray | None = None

    @property
    def last_frame(self) -> int:
        return self.members[-1][0]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _affinity(a: np.ndarray, b: np.ndarray) -> float | None:
    """How well box b continues box a: higher is better, None when it does not."""
    iou = _iou(a, b)
    if iou >= LINK_IOU:
        return 1.0 + iou  # any overlap link beats any distance link
    side_a, side_b = max(a[2] - a[0], a[3] - a[1]), max(b[2] - b[0], b[3] - b[1])
    if min(side_a, side_b) <= 0 or max(side_a, side_b) / min(side_a, side_b) > LINK_SIZE_RATIO:
        return None
    dist = math.hypot((a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2)
    reach = LINK_CENTRE * max(side_a, side_b)
    return None if dist > reach else 1.0 - dist / reach  # in [0, 1]


def link_tracks(boxes_per_frame: Sequence[Sequence[Sequence[float]]], max_gap: int = MAX_GAP) -> list[Track]:
    """Tracks over a video's sampled frames, in order of first appearance.

    `boxes_per_frame[t]` holds the boxes [x1, y1, x2, y2] found in sampled frame t (maybe none).
    Every box belongs to exactly one track, and a track holds at most one box per frame."""
    tracks: list[Track] = []
    for t, boxes in enumerate(boxes_per_frame):
        boxes = [np.asarray(b, np.float64) for b in boxes]
        live = [k for k, tr in enumerate(tracks) if t - tr.last_frame <= max_gap + 1]
        pairs = []
        for k in live:
            for d, box in enumerate(boxes):
                a = _affinity(tracks[k].last_box, box)
                if a is not None:
                    # best affinity first; among equals the more recently seen track
                    pairs.append((-a, t - tracks[k].last_frame, k, d))
        pairs.sort()
        taken_tracks, taken_boxes = set(), set()
        for _, _, k, d in pairs:
            if k in taken_tracks or d in taken_boxes:
                continue
            taken_tracks.add(k)
            taken_boxes.add(d)
            tracks[k].members.append((t, d))
            tracks[k].last_box = boxes[d]
        for d, box in enumerate(boxes):
            if d not in taken_boxes:
                tracks.append(Track([(t, d)], box))
    return tracks


def spread(n: int, k: int) -> list[int]:
    """Positions of at most `k` of `n` items spread evenly (the middles of k equal parts);
    every position when k <= 0 or n <= k."""
    if k <= 0 or n <= k:
        return list(range(n))
    return [int(math.floor((i + 0.5) * n / k)) for i in range(k)]


def counted(lengths: Sequence[int]) -> list[bool]:
    """Which tracks (by the number of frames each was seen in) decide the video score:
    those seen in at least MIN_TRACK_FRAMES frames, or every track when none is that long."""
    if any(n >= MIN_TRACK_FRAMES for n in lengths):
        return [n >= MIN_TRACK_FRAMES for n in lengths]
    return [True] * len(lengths)


def video_score(track_scores: Sequence[Sequence[float]], lengths: Sequence[int], strategy: str) -> tuple[float, list[float]]:
    """(video score, per-track scores): each track's scores aggregated with `strategy`, the
    video score the highest of the counted tracks'. One track: exactly `aggregate`."""
    per_track = [aggregate(s, strategy) for s in track_scores]
    return highest_counted(per_track, lengths), per_track


def highest_counted(per_track: Sequence[float], lengths: Sequence[int]) -> float:
    """The video score from its tracks' scores: the highest of the tracks that count."""
    return max(s for s, ok in zip(per_track, counted(lengths)) if ok)


def early_label_tracks(
    tracks: Sequence[tuple[Sequence[float], int]], lengths: Sequence[int], strategy: str, threshold: float
) -> tuple[bool, float] | None:
    """Early decision over tracks: `tracks[i]` = (known scores, how many still unscored).

    The video score is the highest counted track's, so its bounds are the highest of the
    tracks' lower bounds and the highest of their upper bounds. (is_fake, bound) when the
    label can no longer change, else None (see aggregate.early_label)."""
    lows, highs = [], []
    for (known, unknown), ok in zip(tracks, counted(lengths)):
        if not ok:
            continue
        if len(known) == 0:
            lows.append(0.0)
            highs.append(1.0)
            continue
        bounds = score_bounds(known, unknown, strategy)
        if bounds is None:
            return None
        lows.append(bounds[0])
        highs.append(bounds[1])
    low, high = max(lows), max(highs)
    if low >= threshold:
        return True, low
    if high < threshold:
        return False, high
    return None
