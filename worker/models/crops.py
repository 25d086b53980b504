"""Face crops for the classifier: margin, square, optional eye alignment, resize.

Training and serving both call `crop_faces`, so the model sees at inference exactly the
crops it was trained on. Parts of the square that fall outside the frame are filled with
black (zeros): replicating the border would smear edge pixels into texture the classifier
could learn from.
"""

from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

from worker.types import Detection


def square_region(box: np.ndarray, margin: float) -> tuple[int, int, int]:
    """The crop square for a box: (x0, y0, side) in integer pixels, centred on the box.

    side = max(w, h) * (1 + margin); it may extend past the frame.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1) * (1.0 + margin)
    side_px = max(1, int(round(side)))
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    return int(round(cx - side_px / 2.0)), int(round(cy - side_px / 2.0)), side_px


def eye_angle(landmarks: np.ndarray) -> float:
    """Tilt of the line from the left eye to the right eye, in degrees (y pointing down)."""
    (lx, ly), (rx, ry) = landmarks[0], landmarks[1]
    return math.degrees(math.atan2(float(ry - ly), float(rx - lx)))


def alignment_matrix(box: np.ndarray, landmarks: np.ndarray, margin: float) -> tuple[np.ndarray, int]:
    """Affine map from frame pixels to an upright crop square (eyes level), and its side."""
    eyes_mid = (landmarks[0] + landmarks[1]) / 2.0
    rotation = cv2.getRotationMatrix2D((float(eyes_mid[0]), float(eyes_mid[1])), eye_angle(landmarks), 1.0)
    centre = np.array([(box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0, 1.0])
    cx, cy = rotation @ centre  # the box centre after rotation
    side = max(1, int(round(max(box[2] - box[0], box[3] - box[1]) * (1.0 + margin))))
    matrix = rotation.copy()
    matrix[0, 2] -= cx - side / 2.0
    matrix[1, 2] -= cy - side / 2.0
    return matrix, side


def crop_faces(
    image: np.ndarray, detections: Sequence[Detection], size: int, margin: float, align: bool = False
) -> np.ndarray:
    """One square RGB crop per detection: [K, size, size, 3] uint8 (K may be 0)."""
    out = np.zeros((len(detections), size, size, 3), np.uint8)
    for k, det in enumerate(detections):
        if align:
            matrix, side = alignment_matrix(det.box, det.landmarks, margin)
            square = cv2.warpAffine(
                image, matrix, (side, side), flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0),
            )
        else:
            square = _cut_square(image, *square_region(det.box, margin))
        interpolation = cv2.INTER_AREA if square.shape[0] > size else cv2.INTER_LINEAR
        out[k] = cv2.resize(square, (size, size), interpolation=interpolation)
    return out


def _cut_square(image: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
    height, width = image.shape[:2]
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + side, width), min(y0 + side, height)
    if sx0 == x0 and sy0 == y0 and sx1 == x0 + side and sy1 == y0 + side:
        return image[sy0:sy1, sx0:sx1]  # wholly inside: a view, no copy
    square = np.zeros((side, side, 3), np.uint8)
    if sx1 > sx0 and sy1 > sy0:
        square[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return square
