"""The batch-and-analyse step: decoded videos wait briefly for others, then one `scanner.analyze` runs over all.

One thread. A batch closes at settings.max_batch_frames frames or when its first video has
waited settings.batch_max_wait_ms. Each verdict goes on to `answer`.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable

import structlog

from worker.service import metrics
from worker.service.work import Work
from worker.types import DecodedVideo, ScanError, Verdict

log = structlog.get_logger(__name__)

LOOP_NAME = "batcher"


class Batcher:
    def __init__(
        self, scanner: Any, *, max_frames: int, max_wait_s: float, answer: Callable[[Work, Verdict], None], health=None,
    ):
        self.scanner = scanner
        self.max_frames = max_frames
        self.max_wait_s = max_wait_s
        self.answer = answer
        self._health = health
        self._queue: queue.Queue[tuple[Work, DecodedVideo]] = queue.Queue()  # bounded by the runner's window
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=LOOP_NAME, daemon=True)

    def start(self) -> "Batcher":
        if self._health is not None:
            self._health.watch(LOOP_NAME, self.thread)
        self.thread.start()
        return self

    def submit(self, work: Work, video: DecodedVideo) -> None:
        self._queue.put((work, video))

    def close(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self.thread.join(timeout_s)

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._health is not None:
                self._health.beat(LOOP_NAME)
            batch = self._collect()
            if batch:
                self._analyze(batch)

    def _collect(self) -> list[tuple[Work, DecodedVideo]]:
        try:
            first = self._queue.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        frames = len(first[1].frames)
        deadline = time.monotonic() + self.max_wait_s
        # fill up to max_frames, but never hold a video longer than the wait
        while frames < self.max_frames:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                item = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            batch.append(item)
            frames += len(item[1].frames)
        metrics.BATCH_VIDEOS.observe(len(batch))
        metrics.BATCH_FRAMES.observe(frames)
        return batch

    def _analyze(self, batch: list[tuple[Work, DecodedVideo]]) -> None:
        t0 = time.perf_counter()
        try:
            verdicts = self.scanner.analyze([video for _, video in batch])
        except Exception as exc:  # Scanner.analyze answers its own failures; this is a last resort
            log.exception("analyze_crashed", videos=len(batch))
            metrics.FAILURES.labels("analyze").inc()
            err = ScanError("internal_error", f"{type(exc).__name__}: {exc}")
            verdicts = [Verdict.error(w.request, err) for w, _ in batch]
        metrics.STAGE_SECONDS.labels("analyze").observe(time.perf_counter() - t0)
        for (work, _), verdict in zip(batch, verdicts):
            self.answer(work, verdict)
