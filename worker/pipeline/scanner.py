"""The detection pipeline: request -> frames -> faces -> fake scores -> verdict.

Split in two so a streaming worker can batch across videos: `load` (fetch + decode, run in
a killable child process from a thread pool) and `analyze` (face detection over the frames of all
videos at once, then classification over all their faces at once, from one thread).
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import Callable, Sequence

import numpy as np
import structlog

from worker.media.loader import load_media
from worker.media.sandbox import MediaPool
from worker.memory import release_free_memory
from worker.models.bundle import ModelBundle, load_bundle
from worker.models.classifier import FakeClassifier
from worker.models.crops import crop_faces
from worker.models.retinaface import FaceDetector
from worker.pipeline.aggregate import STRATEGIES, aggregate, frame_scores
from worker.settings import Settings
from worker.types import (
    LABEL_FAKE,
    LABEL_NO_FACE,
    LABEL_REAL,
    DecodedVideo,
    FaceResult,
    Frame,
    ModelInfo,
    ScanError,
    ScanRequest,
    Verdict,
)

log = structlog.get_logger(__name__)

CacheLookup = Callable[[str], "Verdict | None"]


class Scanner:
    def __init__(self, settings: Settings, bundle: ModelBundle | None = None):
        if bundle is None:
            if not settings.model_dir:
                raise ValueError("no model bundle: set DFD_MODEL_DIR (or pass --model-dir)")
            bundle = load_bundle(settings.model_dir)
        self.settings = settings
        self.bundle = bundle
        self.detector = FaceDetector(settings)
        self.classifier = FakeClassifier(bundle, settings)
        self.info: ModelInfo = bundle.info
        self.threshold = settings.threshold if settings.threshold >= 0 else bundle.threshold
        self.aggregation = settings.aggregation or bundle.aggregation
        if self.aggregation not in STRATEGIES:
            raise ValueError(f"unknown aggregation {self.aggregation!r}; choose one of {', '.join(STRATEGIES)}")
        self.providers = {"detector": self.detector.providers, "classifier": self.classifier.providers}
        if settings.media_isolation not in ("process", "thread"):
            raise ValueError(f"DFD_MEDIA_ISOLATION must be process or thread, not {settings.media_isolation!r}")
        # Fetch + decode of untrusted bytes runs in killable children (worker/media/sandbox.py).
        self._media = MediaPool(settings) if settings.media_isolation == "process" else None
        log.info(
            "scanner_ready",
            model=self.info.name,
            version=self.info.version,
            trained=self.info.trained,
            demo=self.info.demo,
            threshold=self.threshold,
            aggregation=self.aggregation,
            providers=self.providers,
        )

    # -- stage 1: fetch and decode (thread pool; the work itself in a child process) -----
    def load(
        self,
        request: ScanRequest,
        extra_roots: Sequence[str] = (),
        cache_lookup: CacheLookup | None = None,
    ) -> DecodedVideo | Verdict:
        """Frames of one video, a cached verdict, or an error verdict. Never raises.

        Safe to call from several threads at once: each call takes one media child (or,
        with media_isolation=thread, runs in the calling thread).
        """
        hits: list[Verdict] = []

        def should_decode(sha256: str) -> bool:
            hit = cache_lookup(sha256)
            if hit is not None:
                hits.append(hit)
            return hit is None

        check = should_decode if cache_lookup is not None else None
        try:
            if self._media is not None:
                loaded = self._media.load(request, extra_roots, check)
            else:
                loaded = load_media(request, self.settings, extra_roots, check)
        except ScanError as exc:
            return self._error(request, exc, {})
        except Exception as exc:  # a bug or a library failure must not take the worker down
            log.exception("load_failed", request_id=request.request_id)
            return self._error(request, ScanError("internal_error", f"{type(exc).__name__}: {exc}"), {})
        if hits:
            return _readdress(hits[0], request)
        return DecodedVideo(request, loaded.frames, loaded.info, content_sha256=loaded.sha256, timings_ms=loaded.timings_ms)

    def close(self) -> None:
        """Stop the media child processes (they also stop on their own when this process exits)."""
        if self._media is not None:
            self._media.close()

    def __enter__(self) -> "Scanner":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- stage 2: detect, crop, classify, aggregate (one thread, batched) -------------
    def analyze(self, videos: list[DecodedVideo]) -> list[Verdict]:
        """One verdict per video, in order; detection and classification batched across all of them."""
        if not videos:
            return []
        try:
            return self._analyze(videos)
        except Exception as exc:
            log.exception("analyze_failed", videos=len(videos))
            err = ScanError("internal_error", f"{type(exc).__name__}: {exc}")
            return [self._error(v.request, err, v.timings_ms) for v in videos]
        finally:
            release_free_memory()  # the batch's frames are gone: see worker/memory.py

    def _analyze(self, videos: list[DecodedVideo]) -> list[Verdict]:
        frames: list[tuple[int, Frame]] = [(vi, f) for vi, v in enumerate(videos) for f in v.frames]
        n_frames = np.array([len(v.frames) for v in videos], dtype=np.float64)

        t0 = time.perf_counter()
        detections = self.detector.detect([f.image for _, f in frames])
        detect_ms = _ms_since(t0)

        t0 = time.perf_counter()
        crops, owners = [], []  # owners[i] = (video index, frame, detection) of crops[i]
        for (vi, frame), dets in zip(frames, detections):
            if not dets:
                continue
            crops.append(
                crop_faces(frame.image, dets, self.bundle.input_size, self.bundle.crop_margin, self.bundle.align_faces)
            )
            owners.extend((vi, frame, d) for d in dets)
        crop_ms = _ms_since(t0)

        t0 = time.perf_counter()
        scores = self.classifier.predict(np.concatenate(crops)) if crops else np.zeros(0, np.float32)
        classify_ms = _ms_since(t0)

        n_faces = np.bincount([o[0] for o in owners], minlength=len(videos)).astype(np.float64)
        verdicts = []
        for vi, video in enumerate(videos):
            # Batched stage times are shared out by each video's share of the work.
            timings = dict(video.timings_ms)
            timings["detect"] = detect_ms * n_frames[vi] / max(n_frames.sum(), 1)
            timings["crop"] = crop_ms * n_faces[vi] / max(n_faces.sum(), 1)
            timings["classify"] = classify_ms * n_faces[vi] / max(n_faces.sum(), 1)
            faces = [
                FaceResult(frame.index, frame.time_s, [float(v) for v in d.box], float(d.score), float(s))
                for (owner, frame, d), s in zip(owners, scores)
                if owner == vi
            ]
            verdicts.append(self._verdict(video, faces, timings))
        return verdicts

    def _verdict(self, video: DecodedVideo, faces: list[FaceResult], timings: dict[str, float]) -> Verdict:
        req = video.request
        common = dict(
            request_id=req.request_id,
            uri=req.uri,
            threshold=self.threshold,
            aggregation=self.aggregation,
            model=self.info,
            faces=faces,
            frames_sampled=len(video.frames),
            content_sha256=video.content_sha256,
            timings_ms=timings,
            metadata=req.metadata,
        )
        if not faces:
            return Verdict(
                label=LABEL_NO_FACE,
                reason=f"no face found in {len(video.frames)} sampled frames",
                **common,
            )
        t0 = time.perf_counter()
        ids, per_frame = frame_scores([f.frame_index for f in faces], [f.fake_score for f in faces])
        score = aggregate(per_frame, self.aggregation)
        timings["aggregate"] = _ms_since(t0)
        return Verdict(
            label=LABEL_FAKE if score >= self.threshold else LABEL_REAL,
            score=score,
            frames_with_faces=int(ids.size),
            **common,
        )

    def _error(self, request: ScanRequest, exc: ScanError, timings: dict[str, float]) -> Verdict:
        return Verdict.error(request, exc, model=self.info, timings_ms=dict(timings))

    # -- convenience: the whole path in one process -------------------------------------
    def scan(self, requests: Sequence[ScanRequest], extra_roots: Sequence[str] = ()) -> list[Verdict]:
        """Verdicts for `requests` in order: loads in a thread pool, analyses in batches."""
        results: list[Verdict | None] = [None] * len(requests)
        batch: list[tuple[int, DecodedVideo]] = []
        batch_frames = 0

        def flush() -> None:
            nonlocal batch, batch_frames
            for (i, _), verdict in zip(batch, self.analyze([v for _, v in batch])):
                results[i] = verdict
            batch, batch_frames = [], 0

        workers = max(1, self.settings.decode_threads)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            # A bounded window of loads in flight keeps the next videos decoding while this
            # thread runs the models, without holding every decoded video in memory.
            pending: deque = deque()
            todo = iter(enumerate(requests))
            for i, req in islice(todo, 2 * workers):
                pending.append((i, pool.submit(self.load, req, extra_roots)))
            while pending:
                i, fut = pending.popleft()
                loaded = fut.result()
                for j, req in islice(todo, 1):
                    pending.append((j, pool.submit(self.load, req, extra_roots)))
                if isinstance(loaded, Verdict):
                    results[i] = loaded
                    continue
                batch.append((i, loaded))
                batch_frames += len(loaded.frames)
                if batch_frames >= self.settings.max_batch_frames:
                    flush()
            flush()
        return [r for r in results if r is not None]


def _readdress(cached: Verdict, request: ScanRequest) -> Verdict:
    """A verdict found by content hash, answered for this request."""
    return dataclasses.replace(cached, request_id=request.request_id, uri=request.uri, metadata=request.metadata, cached=True)


def _ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0

