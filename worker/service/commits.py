"""The commit policy and the one ordered path every offset commit takes.

Offsets are registered when a message is received (`add`) and marked done when its verdict or
dead letter is acknowledged by the broker (`done`, from any thread). What has been received
and not yet committed, done or not, is the window (`uncommitted`): a crash now would hand all
of it to the next owner to redo, so the runner bounds it by settings.max_in_flight.

Commits come from two places: the main loop (blocking `commit`) and the revoke drain on
kafka-python's network thread (`commit_async`, awaited there). Both go through one lock, one
at a time, and both only ever send an offset above the last one committed for that
partition, so a slow commit can never land after a newer one and move an offset backwards.
The consumer is anything with kafka-python's `commit(offsets)` / `commit_async(offsets)`.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Hashable

import structlog
from kafka.errors import RebalanceInProgressError
from kafka.structs import OffsetAndMetadata

from worker.service import metrics
from worker.service.client_loop import loop_sleep
from worker.service.offsets import OffsetTracker

log = structlog.get_logger(__name__)

COMMIT_INTERVAL_S = 1.0  # commits are batched: at most one a second, sooner when the window is full


class CommitPath:
    def __init__(self, consumer: Any, window: int, interval_s: float = COMMIT_INTERVAL_S):
        self.consumer = consumer
        self.window = window
        self.interval_s = interval_s
        self._tracker = OffsetTracker()
        self._state = threading.Lock()  # the tracker, from the main, publisher and network threads
        self._commit = threading.Lock()  # one commit at a time, in order
        self._last: dict[Hashable, int] = {}  # last offset committed per partition
        self._last_commit_at = 0.0

    # -- bookkeeping -------------------------------------------------------------------
    def add(self, tp: Hashable, offset: int) -> None:
        with self._state:
            try:
                self._tracker.add(tp, offset)
            except ValueError:
                # the position went back (offset reset): what was pending there comes again
                dropped = self._tracker.forget(tp)
                log.warning("offset_rewound", partition=getattr(tp, "partition", tp), offset=offset, dropped=dropped)
                self._tracker.add(tp, offset)
            metrics.IN_FLIGHT.set(self._tracker.uncommitted())

    def done(self, tp: Hashable, offset: int) -> bool:
        with self._state:
            return self._tracker.done(tp, offset)

    def pending(self, partitions: list | None = None) -> int:
        """Received and not yet done (what a drain waits for)."""
        with self._state:
            if partitions is None:
                return self._tracker.pending()
            return sum(self._tracker.pending(tp) for tp in partitions)

    def uncommitted(self) -> int:
        """Received and not yet committed, done or not: the window."""
        with self._state:
            return self._tracker.uncommitted()

    def room(self) -> int:
        return max(0, self.window - self.uncommitted())

    def partitions(self) -> list:
        with self._state:
            return self._tracker.partitions()

    def forget(self, partitions: list) -> int:
        """Let partitions go (revoked or lost); returns how many offsets were not done."""
        with self._state:
            left = sum(self._tracker.forget(tp) for tp in partitions)
            for tp in partitions:
                self._last.pop(tp, None)  # a later owner may have committed anything meanwhile
            metrics.IN_FLIGHT.set(self._tracker.uncommitted())
        return left

    # -- policy ------------------------------------------------------------------------
    def due(self) -> bool:
        """Commit at most once per interval, or at once when the window is full, so finished
        work never holds the window for a whole interval."""
        if time.monotonic() - self._last_commit_at >= self.interval_s:
            return True
        return self.room() == 0 and bool(self._offsets(None))

    # -- the ordered commit path -------------------------------------------------------
    def commit(self, partitions: list | None = None) -> bool:
        """Blocking commit from the main thread. Returns False when it failed (the next one
        carries the progress)."""
        with self._commit:
            self._last_commit_at = time.monotonic()
            offsets = self._offsets(partitions)
            if not offsets:
                return True
            try:
                self.consumer.commit(_request(offsets))
            except RebalanceInProgressError:
                # with the cooperative assignor the loop keeps turning while the group rebalances,
                # and the broker refuses commits until the round completes: the next one carries it
                log.info("commit_deferred", reason="rebalance_in_progress")
                return False
            except Exception as exc:  # broker away
                metrics.FAILURES.labels("commit").inc()
                log.warning("commit_failed", error=str(exc))
                return False
            self._committed(offsets)
            return True

    async def commit_async(self, partitions: list) -> bool:
        """The same commit from kafka-python's network thread (rebalance hooks), where blocking
        is refused: the lock is taken without blocking the loop, the commit is awaited."""
        while not self._commit.acquire(blocking=False):
            await loop_sleep(0.002)
        try:
            self._last_commit_at = time.monotonic()
            offsets = self._offsets(partitions)
            if not offsets:
                return True
            try:
                await self.consumer.commit_async(_request(offsets))
            except Exception as exc:  # the new owner starts from the previous commit: redone, not lost
                metrics.FAILURES.labels("commit").inc()
                log.warning("commit_failed", error=str(exc), during="rebalance")
                return False
            self._committed(offsets)
            return True
        finally:
            self._commit.release()

    def last_committed(self, tp: Hashable) -> int | None:
        with self._state:
            return self._last.get(tp)

    def _offsets(self, partitions: list | None) -> dict:
        with self._state:
            offsets = self._tracker.to_commit()
            if partitions is not None:
                offsets = {tp: off for tp, off in offsets.items() if tp in partitions}
            # never backwards, never the same offset twice
            return {tp: off for tp, off in offsets.items() if self._last.get(tp, -1) < off}

    def _committed(self, offsets: dict) -> None:
        metrics.COMMITS.inc()
        with self._state:
            for tp, off in offsets.items():
                if tp in self._tracker.partitions():  # not forgotten while the commit was in flight
                    self._tracker.committed(tp, off)
                    self._last[tp] = max(off, self._last.get(tp, -1))
            metrics.IN_FLIGHT.set(self._tracker.uncommitted())


def _request(offsets: dict) -> dict:
    return {tp: OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()}
