"""The detection pipeline: request -> frames -> faces -> fake scores -> verdict.

Split in two so a streaming worker can batch across videos: `load` (fetch + decode, run in
a killable child process from a thread pool) and `analyze` (face detection over the frames of all
videos at once, then classification over all their faces at once, from one thread).
"""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np
import structlog

from worker.media.loader import load_media
from worker.media.sandbox import MediaPool
from worker.memory import release_free_memory
from worker.models.bundle import ModelBundle, effective_detection, file_sha256, load_bundle
from worker.models.classifier import FakeClassifier
from worker.models.crops import crop_faces
from worker.models.retinaface import FaceDetector
from worker.pipeline.aggregate import STRATEGIES, aggregate
from worker.pipeline.tracks import Track, counted, early_label_tracks, highest_counted, link_tracks, spread
from worker.pipeline.neardup import NearDuplicates
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
        # Detect as the model's training crops were detected: the bundle's detector and settings,
        # unless the operator overrode them (reported in every verdict's model.overrides).
        detection, overrides = effective_detection(bundle, settings)
        self.detector = FaceDetector(settings.replace(**detection), model=bundle.detector_path)
        self.classifier = FakeClassifier(bundle, settings)
        detector_sha256 = file_sha256(Path(settings.detector_path)) if settings.detector_path else bundle.info.detector_sha256
        self.info: ModelInfo = dataclasses.replace(bundle.info, overrides=overrides, detector_sha256=detector_sha256)
        self.threshold = settings.threshold if settings.threshold >= 0 else bundle.threshold
        self.aggregation = settings.aggregation or bundle.aggregation
        if self.aggregation not in STRATEGIES:
            raise ValueError(f"unknown aggregation {self.aggregation!r}; choose one of {', '.join(STRATEGIES)}")
        self.providers = {"detector": self.detector.providers, "classifier": self.classifier.providers}
        self.near_duplicates = NearDuplicates.from_settings(settings, self.info.sha256)  # None: off
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
            detection=detection,
            overrides=overrides,
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

    def start_media(self) -> None:
        """Spawn the media children now (the service calls this before it consumes)."""
        if self._media is not None:
            log.info("media_children_started", pids=self._media.start().pids())

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
            if self.near_duplicates is not None:
                return self._analyze_near_duplicates(videos)
            return self._analyze(videos)
        except Exception as exc:
            log.exception("analyze_failed", videos=len(videos))
            err = ScanError("internal_error", f"{type(exc).__name__}: {exc}")
            return [self._error(v.request, err, v.timings_ms) for v in videos]
        finally:
            release_free_memory()  # the batch's frames are gone: see worker/memory.py

    def _analyze_near_duplicates(self, videos: list[DecodedVideo]) -> list[Verdict]:
        """Near-duplicates of known fakes are answered at once; the rest are analysed, then indexed."""
        nd = self.near_duplicates
        hashes, matches = [], []
        for video in videos:
            t0 = time.perf_counter()
            hashes.append(nd.hashes_of(video.info))  # hashed while decoding (worker/media/loader.py)
            matches.append(nd.lookup(hashes[-1]))
            video.timings_ms["neardup"] = _ms_since(t0)
        fresh = iter(self._analyze([v for v, m in zip(videos, matches) if m is None or not m.flags]))
        verdicts = []
        for video, video_hashes, match in zip(videos, hashes, matches):
            if match is not None and match.flags:
                verdicts.append(self._near_duplicate_verdict(video, match))
                continue
            verdict = next(fresh)
            if match is not None:  # a near-duplicate of a real video: scanned, the match recorded
                verdict.near_duplicate = match.to_dict(reused=False)
            t0 = time.perf_counter()
            nd.record(verdict, video_hashes, video.frames)
            verdict.timings_ms["neardup_record"] = _ms_since(t0)
            verdicts.append(verdict)
        return verdicts

    def _near_duplicate_verdict(self, video: DecodedVideo, match) -> Verdict:
        req = video.request
        what = f"request {match.request_id}" if match.source == "index" else match.source
        return Verdict(
            request_id=req.request_id,
            uri=req.uri,
            label=LABEL_FAKE,
            score=match.score,
            threshold=self.threshold,
            aggregation=self.aggregation,
            reason=f"near-duplicate of {what} ({match.matched_frames} of {len(match.distances)} frames match)",
            model=self.info,
            frames_sampled=len(video.frames),
            content_sha256=video.content_sha256,
            timings_ms=dict(video.timings_ms),
            metadata=req.metadata,
            callback_url=req.callback_url,
            near_duplicate=match.to_dict(reused=True),
        )

    def _analyze(self, videos: list[DecodedVideo]) -> list[Verdict]:
        if not videos:
            return []
        frames: list[tuple[int, Frame]] = [(vi, f) for vi, v in enumerate(videos) for f in v.frames]
        n_frames = np.array([len(v.frames) for v in videos], dtype=np.float64)

        t0 = time.perf_counter()
        detections = self.detector.detect([f.image for _, f in frames])
        detect_ms = _ms_since(t0)

        # Faces linked into tracks per video; only the crops chosen from each track are cut.
        t0 = time.perf_counter()
        per_video: list[list[tuple[Frame, list]]] = [[] for _ in videos]
        for (vi, frame), dets in zip(frames, detections):
            per_video[vi].append((frame, dets))
        tracks: list[list[Track]] = []
        chosen: dict[tuple[int, int, int], int] = {}  # (video, frame position, detection) -> track
        for vi, seen in enumerate(per_video):
            tracks.append(link_tracks([[d.box for d in dets] for _, dets in seen]))
            for ti, track in enumerate(tracks[vi]):
                for j in spread(len(track.members), self.settings.crops_per_face):
                    chosen[(vi, *track.members[j])] = ti
        track_ms = _ms_since(t0)

        t0 = time.perf_counter()
        crops, owners = [], []  # owners[i] = (video index, frame, detection, track) of crops[i]
        for vi, seen in enumerate(per_video):
            for t, (frame, dets) in enumerate(seen):
                picks = [(d, chosen[(vi, t, k)]) for k, d in enumerate(dets) if (vi, t, k) in chosen]
                if not picks:
                    continue
                crops.append(crop_faces(
                    frame.image, [d for d, _ in picks], self.bundle.input_size, self.bundle.crop_margin, self.bundle.align_faces
                ))
                owners.extend((vi, frame, d, ti) for d, ti in picks)
        crop_ms = _ms_since(t0)

        t0 = time.perf_counter()
        crops = np.concatenate(crops) if crops else np.zeros((0, self.bundle.input_size, self.bundle.input_size, 3), np.uint8)
        if self.settings.early_decision:
            scores, early = self._classify_early(tracks, owners, crops)
        else:
            scores, early = self.classifier.predict(crops), {}
        classify_ms = _ms_since(t0)
        scored = ~np.isnan(scores)  # faces of frames an early decision left unclassified are not

        n_faces = np.bincount([o[0] for o, ok in zip(owners, scored) if ok], minlength=len(videos)).astype(np.float64)
        dropped = np.zeros(len(videos), np.int64)
        with_faces = np.zeros(len(videos), np.int64)
        for (vi, _), dets in zip(frames, detections):
            dropped[vi] += getattr(dets, "dropped", 0)
            with_faces[vi] += bool(dets)
        thumbs = thumbnail_jpegs(crops) if len(crops) and self.settings.store_thumbnails else None
        verdicts = []
        for vi, video in enumerate(videos):
            # Batched stage times are shared out by each video's share of the work.
            timings = dict(video.timings_ms)
            timings["detect"] = detect_ms * n_frames[vi] / max(n_frames.sum(), 1)
            timings["track"] = track_ms * n_frames[vi] / max(n_frames.sum(), 1)
            timings["crop"] = crop_ms * n_faces[vi] / max(n_faces.sum(), 1)
            timings["classify"] = classify_ms * n_faces[vi] / max(n_faces.sum(), 1)
            mine = [(frame, d, ti, float(s)) for (owner, frame, d, ti), s, ok in zip(owners, scores, scored) if owner == vi and ok]
            faces = [FaceResult(frame.index, frame.time_s, [float(v) for v in d.box], float(d.score), s) for frame, d, _, s in mine]
            verdicts.append(self._verdict(
                video, faces, [ti for _, _, ti, _ in mine], tracks[vi], timings, faces_dropped=int(dropped[vi]),
                early=early.get(vi), frames_with_faces=int(with_faces[vi]),
            ))
            if thumbs is not None:
                verdicts[-1].thumbnails = [t for (owner, _, _, _), t, ok in zip(owners, thumbs, scored) if owner == vi and ok]
        return verdicts

    def _classify_early(self, tracks: list[list[Track]], owners: list, crops: np.ndarray) -> tuple[np.ndarray, dict]:
        """Fake scores in two rounds: every other chosen crop of each track (spread over it),
        then the rest only for videos whose label those could still change. Scores of faces
        left out are NaN; `early[video index]` = (is_fake, score bound, frames scored) for videos
        decided after the first round (exact: see early_label_tracks)."""
        rows: list[list[list[int]]] = [[[] for _ in video_tracks] for video_tracks in tracks]
        for i, (vi, _, _, ti) in enumerate(owners):
            rows[vi][ti].append(i)
        round1 = sorted(i for video_rows in rows for track_rows in video_rows for i in track_rows[::2])
        scores = np.full(len(owners), np.nan, np.float32)
        if round1:
            scores[round1] = self.classifier.predict(crops[round1])
        early = {}
        for vi, video_rows in enumerate(rows):
            if all(len(r) == len(r[::2]) for r in video_rows):
                continue  # nothing left to skip
            known = [(scores[r[::2]], len(r) - len(r[::2])) for r in video_rows]
            lengths = [len(t.members) for t in tracks[vi]]
            got = early_label_tracks(known, lengths, self.aggregation, self.threshold)
            if got is not None:
                early[vi] = (*got, len({owners[i][1].index for r in video_rows for i in r[::2]}))
        round2 = [i for i, (vi, _, _, _) in enumerate(owners) if np.isnan(scores[i]) and vi not in early]
        if round2:
            scores[round2] = self.classifier.predict(crops[round2])
        return scores, early

    def _verdict(
        self, video: DecodedVideo, faces: list[FaceResult], face_tracks: list[int], tracks: list[Track],
        timings: dict[str, float], faces_dropped: int = 0, early: tuple[bool, float, int] | None = None,
        frames_with_faces: int = 0,
    ) -> Verdict:
        req = video.request
        common = dict(
            request_id=req.request_id,
            uri=req.uri,
            threshold=self.threshold,
            aggregation=self.aggregation,
            model=self.info,
            faces=faces,
            faces_dropped=faces_dropped,
            frames_sampled=len(video.frames),
            frames_with_faces=frames_with_faces,
            content_sha256=video.content_sha256,
            timings_ms=timings,
            metadata=req.metadata,
            callback_url=req.callback_url,
        )
        if not faces:
            common["frames_with_faces"] = 0
            return Verdict(
                label=LABEL_NO_FACE,
                reason=f"no face found in {len(video.frames)} sampled frames",
                **common,
            )
        t0 = time.perf_counter()
        lengths = [len(t.members) for t in tracks]
        members: list[list[int]] = [[] for _ in tracks]
        for i, ti in enumerate(face_tracks):
            members[ti].append(i)
        chosen = [len(spread(n, self.settings.crops_per_face)) for n in lengths]
        complete = [len(m) == c for m, c in zip(members, chosen)]
        per_track = [aggregate([faces[i].fake_score for i in m], self.aggregation) if ok else None
                     for m, ok in zip(members, complete)]
        common["tracks"] = [
            {"faces": m, "frames_seen": n, "score": None if s is None else round(float(s), 6), "counted": c}
            for m, n, s, c in zip(members, lengths, per_track, counted(lengths))
        ]
        if early is not None:
            # decided before every chosen face was scored: the label is the one full scoring
            # would give, and the score is the bound that decided it (the full score lies beyond it)
            is_fake, bound, frames_scored = early
            return Verdict(
                label=LABEL_FAKE if is_fake else LABEL_REAL,
                score=bound,
                early_decision={"frames_scored": frames_scored, "score_is": "lower_bound" if is_fake else "upper_bound"},
                **common,
            )
        score = highest_counted(per_track, lengths)  # every chosen face was scored: no track is None
        timings["aggregate"] = _ms_since(t0)
        return Verdict(
            label=LABEL_FAKE if score >= self.threshold else LABEL_REAL,
            score=score,
            **common,
        )

    def _error(self, request: ScanRequest, exc: ScanError, timings: dict[str, float]) -> Verdict:
        return Verdict.error(request, exc, model=self.info, timings_ms=dict(timings))

    # -- convenience: the whole path in one process -------------------------------------
    def scan(self, requests: Sequence[ScanRequest], extra_roots: Sequence[str] = ()) -> list[Verdict]:
        """Verdicts for `requests` in their order (see `scan_iter` for answers as they come)."""
        order = {r.request_id: i for i, r in enumerate(requests)}
        return sorted(self.scan_iter(requests, extra_roots), key=lambda v: order[v.request_id])

    def scan_iter(self, requests: Iterable[ScanRequest], extra_roots: Sequence[str] = ()) -> Iterator[Verdict]:
        """Verdicts in the order they are ready: loads in a thread pool, analyses in batches.

        A partial batch is analysed as soon as no other load has finished, so a slow video
        never holds back the answers of fast ones, while loads that finish together still
        share one model call."""
        batch: list[DecodedVideo] = []
        batch_frames = 0
        workers = max(1, self.settings.decode_threads)
        todo = iter(requests)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            # A bounded window of loads in flight keeps the next videos decoding while this
            # thread runs the models, without holding every decoded video in memory.
            pending = {pool.submit(self.load, r, extra_roots) for r in islice(todo, 2 * workers)}
            while pending or batch:
                done = {f for f in pending if f.done()}
                if not done and batch:
                    yield from self.analyze(batch)
                    batch, batch_frames = [], 0
                    continue
                if not done:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    pending.discard(fut)
                    pending.update(pool.submit(self.load, r, extra_roots) for r in islice(todo, 1))
                    loaded = fut.result()
                    if isinstance(loaded, Verdict):
                        yield loaded
                        continue
                    batch.append(loaded)
                    batch_frames += len(loaded.frames)
                    if batch_frames >= self.settings.max_batch_frames:
                        yield from self.analyze(batch)
                        batch, batch_frames = [], 0


def _readdress(cached: Verdict, request: ScanRequest) -> Verdict:
    """A verdict found by content hash, answered for this request."""
    return dataclasses.replace(
        cached, request_id=request.request_id, uri=request.uri, metadata=request.metadata,
        callback_url=request.callback_url, cached=True, thumbnails=None,
    )


def thumbnail_jpegs(crops: np.ndarray, size: int = 96) -> list[bytes]:
    """Small JPEGs of the face crops (RGB uint8 [K, H, W, 3]) for the review page (DFD_STORE_THUMBNAILS)."""
    out = []
    for crop in crops:
        small = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
        out.append(jpeg.tobytes() if ok else b"")
    return out


def _ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0

