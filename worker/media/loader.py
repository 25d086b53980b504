"""Fetch + decode of one request, the part of the pipeline that touches untrusted bytes.

It runs inside a sandbox child process (worker/media/sandbox.py) by default, or in the
caller's thread with DFD_MEDIA_ISOLATION=thread; the code is the same either way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import structlog

from worker.media import images
from worker.media.decode import decode_frames
from worker.media.sources import fetch
from worker.settings import Settings
from worker.types import Frame, ScanError, ScanRequest, VideoInfo

log = structlog.get_logger(__name__)

# Given the content hash, says whether to go on decoding (False: a cached verdict exists).
ShouldDecode = Callable[[str], bool]


@dataclass
class Loaded:
    sha256: str
    frames: list[Frame] = field(default_factory=list)
    info: VideoInfo | None = None  # None: not decoded (the content hash was answered from cache)
    timings_ms: dict[str, float] = field(default_factory=dict)


def load_media(
    request: ScanRequest,
    settings: Settings,
    extra_roots: Sequence[str] = (),
    should_decode: ShouldDecode | None = None,
) -> Loaded:
    """Fetch `request.uri` and decode its frames; raises ScanError for anything unusable."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    source = _with_retries(settings, lambda: fetch(request, settings, extra_roots))
    timings["fetch"] = _ms_since(t0)
    with source:
        if should_decode is not None and not should_decode(source.sha256):
            return Loaded(source.sha256, timings_ms=timings)
        t0 = time.perf_counter()
        # The bytes decide what the file is, never its name.
        kind = images.sniff_file(source.path)
        grid = _grid(settings)
        if kind is not None:
            frames, info = images.read_image(source.path, settings, kind)
            if grid is not None:
                grid.add_image(frames[0].image)
        else:
            frames, info = decode_frames(source.path, settings, grid=grid)
        if grid is not None:
            info.pdq, info.pdq_ms = grid.entries(), grid.ms
            timings["neardup_hash"] = grid.ms  # part of "decode"
        timings["decode"] = _ms_since(t0)
    return Loaded(source.sha256, frames, info, timings)


def _grid(settings: Settings):
    """The near-duplicate hash grid, decoded in the same pass as the sampled frames, when the
    feature is on (worker/pipeline/neardup.py); None otherwise."""
    if not settings.neardup_enabled:
        return None
    from worker.pipeline import neardup

    return neardup.GridHasher(settings.neardup_min_quality) if neardup.available() else None


def _with_retries(settings: Settings, attempt: Callable):
    delay = settings.retry_backoff_s
    for n in range(1, settings.retry_max_attempts + 1):
        try:
            return attempt()
        except ScanError as exc:
            if not exc.transient or n == settings.retry_max_attempts:
                if exc.transient:
                    exc.reason = f"{exc.reason} (after {n} attempts)"
                raise
            log.warning("transient_failure_retrying", code=exc.code, reason=exc.reason, attempt=n)
            time.sleep(delay)
            delay *= 2


def _ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0
