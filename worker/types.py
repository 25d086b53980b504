"""The message and result types the whole product speaks: request, frame, face, verdict.

They are plain dataclasses over numpy arrays. JSON exists only at the edges (Kafka, Redis,
the CLI), through `to_dict` / `from_dict` here, so every edge writes the same schema.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

VERDICT_SCHEMA_VERSION = 1
REQUEST_SCHEMA_VERSION = 1

LABEL_FAKE = "fake"
LABEL_REAL = "real"
LABEL_NO_FACE = "no_face"
LABEL_ERROR = "error"
LABELS = (LABEL_FAKE, LABEL_REAL, LABEL_NO_FACE, LABEL_ERROR)


class ScanError(Exception):
    """A video that cannot be scanned: becomes an `error` verdict with `reason`.

    `code` is a short machine-readable cause (e.g. `source_refused`, `decode_failed`);
    `transient` marks failures worth retrying (timeouts, HTTP 5xx).
    """

    def __init__(self, code: str, reason: str, *, transient: bool = False):
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.transient = transient


@dataclass(frozen=True)
class ScanRequest:
    """One video to scan. `uri` is a local path, file://, http:// or https:// URI."""

    request_id: str
    uri: str
    sha256: str | None = None  # expected content hash; a mismatch is an error verdict
    metadata: dict[str, Any] = field(default_factory=dict)  # passed through to the verdict
    callback_url: str | None = None  # dfd-api's webhook sender POSTs the verdict here

    def to_dict(self) -> dict[str, Any]:
        doc = {
            "schema_version": REQUEST_SCHEMA_VERSION,
            "request_id": self.request_id,
            "uri": self.uri,
            "sha256": self.sha256,
            "metadata": self.metadata,
        }
        if self.callback_url is not None:
            doc["callback_url"] = self.callback_url
        return doc


@dataclass
class Frame:
    """A decoded, sampled frame: RGB uint8, HxWx3, already rotated upright."""

    index: int  # position in the video's sampled frames (0..N-1)
    time_s: float  # presentation time in seconds
    image: np.ndarray


@dataclass
class VideoInfo:
    """What decoding learned about a video."""

    width: int = 0
    height: int = 0
    duration_s: float = 0.0
    fps: float = 0.0
    codec: str = ""
    rotation: int = 0  # degrees the frames were rotated to be upright
    strategy: str = ""  # how frames were reached: "seek" or "sequential"
    # near-duplicate hashes of the fixed-rate grid, when DFD_NEARDUP_ENABLED (worker/pipeline/neardup.py):
    # (grid position, time s, PDQ bytes, quality, PDQ of the centre crop or None), and the ms spent hashing
    pdq: list = field(default_factory=list)
    pdq_ms: float = 0.0


@dataclass
class DecodedVideo:
    """Frames sampled from one video plus the facts gathered while fetching and decoding it."""

    request: ScanRequest
    frames: list[Frame]
    info: VideoInfo
    content_sha256: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class Detection:
    """One face found by the detector, in the original frame's pixel coordinates."""

    box: np.ndarray  # float32 [x1, y1, x2, y2], clipped to the frame
    score: float  # detector confidence
    landmarks: np.ndarray  # float32 [5, 2]: left eye, right eye, nose, mouth left, mouth right

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])


@dataclass
class FaceResult:
    """A scored face, as it appears in a verdict."""

    frame_index: int
    time_s: float
    box: list[float]  # [x1, y1, x2, y2] in original pixels
    detector_score: float
    fake_score: float  # probability of fake from the classifier, 0..1

    def to_dict(self) -> dict[str, Any]:
        return {
            "frame_index": self.frame_index,
            "time_s": round(self.time_s, 3),
            "box": [round(float(v), 1) for v in self.box],
            "detector_score": round(self.detector_score, 4),
            "fake_score": round(self.fake_score, 6),
        }


@dataclass
class ModelInfo:
    """Identity of the classifier that made a verdict (from the model bundle)."""

    name: str
    version: str
    sha256: str
    trained: bool = True  # False: a randomly initialised bundle, scores mean nothing
    demo: bool = False  # True: a demo model trained on synthetic fakes, not a production detector
    detector_sha256: str | None = None  # the bundle's face detector; None for format-1 bundles
    # settings the operator set that differ from the bundle's (detection settings, detector_path)
    overrides: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Verdict:
    """The answer for one request."""

    request_id: str
    uri: str
    label: str  # one of LABELS
    score: float | None = None  # video-level probability of fake (None for no_face / error)
    threshold: float | None = None
    aggregation: str | None = None
    reason: str | None = None  # why, for error and no_face
    error_code: str | None = None
    model: ModelInfo | None = None
    faces: list[FaceResult] = field(default_factory=list)
    faces_dropped: int = 0  # faces detected but not scored (over DFD_MAX_FACES_PER_FRAME in their frame)
    frames_sampled: int = 0
    frames_with_faces: int = 0
    content_sha256: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    cached: bool = False  # answered from the Redis cache without decoding
    # a near-duplicate found by PDQ hashes (worker/pipeline/neardup.py): source, request_id,
    # label, distances, matched_frames, reused (True: this verdict was answered from it)
    near_duplicate: dict[str, Any] | None = None
    # set when DFD_EARLY_DECISION stopped scoring frames once the label could no longer change:
    # {"frames_scored": k, "score_is": "lower_bound" | "upper_bound"}
    early_decision: dict[str, Any] | None = None
    # face tracks (the same face across sampled frames, worker/pipeline/tracks.py): per track
    # {"faces": [indices into faces], "frames_seen": n, "score": s | None, "counted": bool}
    tracks: list[dict[str, Any]] | None = None
    created_at: float = field(default_factory=time.time)
    schema_version: int = VERDICT_SCHEMA_VERSION
    callback_url: str | None = None  # the request's, carried for dfd-api's webhook sender
    # 96 px JPEG face crops, one per face, stored beside the verdict in Redis (never in the JSON)
    thumbnails: list[bytes] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.label not in LABELS:
            raise ValueError(f"unknown verdict label {self.label!r}")

    @property
    def notice(self) -> str | None:
        """A warning every consumer of this verdict must see."""
        if self.model is not None and not self.model.trained:
            return "UNTRAINED MODEL: randomly initialised weights, the score means nothing"
        if self.model is not None and self.model.demo:
            return "DEMO MODEL: trained on synthetic pseudo-fakes, not a production deepfake detector"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "request_id": self.request_id,
            "uri": self.uri,
            "label": self.label,
            "score": None if self.score is None or math.isnan(self.score) else round(float(self.score), 6),
            "threshold": self.threshold,
            "aggregation": self.aggregation,
            "reason": self.reason,
            "error_code": self.error_code,
            "notice": self.notice,
            "model": self.model.to_dict() if self.model else None,
            "faces": [f.to_dict() for f in self.faces],
            "faces_dropped": self.faces_dropped,
            "frames_sampled": self.frames_sampled,
            "frames_with_faces": self.frames_with_faces,
            "content_sha256": self.content_sha256,
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
            "metadata": self.metadata,
            "cached": self.cached,
            "near_duplicate": self.near_duplicate,
            "early_decision": self.early_decision,
            "tracks": self.tracks,
            "created_at": self.created_at,
            **({"callback_url": self.callback_url} if self.callback_url is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Verdict":
        # fields this version does not know (a newer writer's) are ignored, not an error
        known = {f.name for f in dataclasses.fields(ModelInfo)}
        model = ModelInfo(**{k: v for k, v in d["model"].items() if k in known}) if d.get("model") else None
        faces = [FaceResult(**f) for f in d.get("faces", [])]
        keep = {f.name for f in dataclasses.fields(cls)} - {"model", "faces", "thumbnails"}
        return cls(model=model, faces=faces, **{k: v for k, v in d.items() if k in keep})

    @classmethod
    def error(cls, request: ScanRequest, exc: ScanError, **extra: Any) -> "Verdict":
        return cls(
            request_id=request.request_id,
            uri=request.uri,
            label=LABEL_ERROR,
            reason=exc.reason,
            error_code=exc.code,
            metadata=request.metadata,
            callback_url=request.callback_url,
            **extra,
        )
