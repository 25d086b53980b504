"""Redis writes off the commit path: a bounded queue drained by its own thread.

The publisher hands each acknowledged verdict here and moves on, so a slow or absent Redis
never delays acknowledgements or commits. When the queue is full the write is dropped and
counted (`dfd_failures_total{reason="cache_write_dropped"}`); the verdict is on the results
topic regardless, where a materializer (or `ScanClient.wait`) finds it.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable

import structlog

from worker.service import metrics

log = structlog.get_logger(__name__)

QUEUE_SIZE = 1000
LOOP_NAME = "redis_writer"


class RedisWriter:
    def __init__(self, health=None, size: int = QUEUE_SIZE):
        self._queue: queue.Queue[Callable[[], object]] = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._health = health
        self.thread = threading.Thread(target=self._loop, name=LOOP_NAME, daemon=True)

    def start(self) -> "RedisWriter":
        if self._health is not None:
            self._health.watch(LOOP_NAME, self.thread)
        self.thread.start()
        return self

    def submit(self, write: Callable[[], object]) -> bool:
        """Queue a write; never blocks. False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(write)
            return True
        except queue.Full:
            metrics.FAILURES.labels("cache_write_dropped").inc()
            return False

    def backlog(self) -> int:
        return self._queue.qsize()

    def close(self, timeout_s: float = 2.0) -> None:
        """Write what is queued within timeout_s, then stop."""
        self._stop.set()
        self.thread.join(timeout_s)

    def _loop(self) -> None:
        while True:
            if self._health is not None:
                self._health.beat(LOOP_NAME)
            try:
                write = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            try:
                write()
            except Exception:  # a bug in one write must not stop the others
                metrics.FAILURES.labels("cache_write").inc()
                log.exception("redis_write_crashed")
