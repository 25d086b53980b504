"""The publish step: produce verdicts and dead letters, handle acknowledgements, sort failures by kind.

`publish` and `dead_letter` may be called from any thread; the outcome of every send comes
back to one publisher thread, which
- on acknowledgement (acks=all): counts and logs the verdict, queues the Redis write
  (`redis_writer.py`, never waited for) and marks the offset done;
- on a failure that can never succeed (`permanent`: the record cannot be serialised, is too
  large, the topic name is invalid, or an error kafka.errors marks as not retriable): sends the
  request to the dead-letter topic with code `unpublishable` and the reason, so its offset
  commits; a dead letter that is itself too large is sent again without the original value;
- on any other failure (broker away, timeouts, the worker's own credentials or permissions):
  publishes again with backoff, never dropping the answer. While an answer has been failing
  for longer than UNREADY_AFTER_S the worker reports itself not ready; its offset stays
  uncommitted and the full window pauses intake.
"""

from __future__ import annotations

import heapq
import itertools
import queue
import threading
import time
from typing import Any, Callable

import structlog
from kafka.errors import (
    AuthorizationError,
    BrokerNotAvailableError,
    IllegalStateError,
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    SaslAuthenticationFailedError,
    UnsupportedVersionError,
)

from worker.service import metrics
from worker.service.dead_letter import send_dead_letter
from worker.service.messages import Rejected, encode_verdict, verdict_headers
from worker.service.work import Work
from worker.types import Verdict

log = structlog.get_logger(__name__)

LOOP_NAME = "publisher"
RETRY_MAX_S = 10.0  # cap of the backoff between attempts to publish one answer
UNREADY_AFTER_S = 30.0

# failures of the worker's setup or of the cluster, not of the message: retried, never dead-lettered
_NOT_THE_MESSAGE = (
    AuthorizationError, SaslAuthenticationFailedError, BrokerNotAvailableError, IllegalStateError, UnsupportedVersionError,
)
_NEVER_FITS = (MessageSizeTooLargeError, InvalidTopicError)


def permanent(exc: BaseException) -> bool:
    """True for a publish failure that no retry can fix."""
    if isinstance(exc, _NEVER_FITS):
        return True
    if isinstance(exc, KafkaError):
        return not exc.retriable and not isinstance(exc, _NOT_THE_MESSAGE)
    # raised before anything reached the client: the key or value cannot be encoded
    return isinstance(exc, (TypeError, ValueError))  # UnicodeEncodeError is a ValueError


def too_large(exc: BaseException) -> bool:
    return isinstance(exc, MessageSizeTooLargeError) or "TooLarge" in type(exc).__name__


class Publisher:
    def __init__(
        self,
        producer: Any,
        *,
        results_topic: str,
        dead_letter_topic: str,
        model_info: Any,
        backoff_s: float,
        on_published: Callable[[Work], None],
        on_done: Callable[[Work], None],
        health=None,
    ):
        self.producer = producer
        self.results_topic = results_topic
        self.dead_letter_topic = dead_letter_topic
        self.model_info = model_info
        self.backoff_s = backoff_s
        self.on_published = on_published  # e.g. the Redis write, queued (must not block)
        self.on_done = on_done  # the offset may commit
        self._health = health
        self._outcomes: queue.Queue[tuple[Work, BaseException | None]] = queue.Queue()
        self._retries: list[tuple[float, int, Work]] = []  # (due, tie-break, work), publisher thread only
        self._seq = itertools.count()
        self._failing: dict[Work, float] = {}  # work -> first failure, publisher thread only
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=LOOP_NAME, daemon=True)

    def start(self) -> "Publisher":
        if self._health is not None:
            self._health.watch(LOOP_NAME, self.thread)
        self.thread.start()
        return self

    def close(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self.thread.join(timeout_s)

    # -- any thread ----------------------------------------------------------------------
    def publish(self, work: Work, verdict: Verdict) -> None:
        work.verdict = verdict
        if verdict.label == "error" and verdict.error_code:
            metrics.FAILURES.labels(f"scan_error_{verdict.error_code}").inc()
        self._send(work)

    def dead_letter(self, work: Work, rejected: Rejected) -> None:
        work.dead_letter, work.verdict = rejected, None
        log.warning("dead_letter", code=rejected.code, reason=rejected.reason, where=work.where)
        self._send(work, first=True)

    def _send(self, work: Work, first: bool = False) -> None:
        work.publishes += 1
        try:
            if work.dead_letter is not None:
                future = send_dead_letter(
                    self.producer, self.dead_letter_topic, work.dead_letter, key=work.key, value=work.value,
                    topic=work.tp.topic, partition=work.tp.partition, offset=work.offset, count=first,
                )
            else:
                v = work.verdict
                future = self.producer.send(
                    self.results_topic, key=v.request_id.encode("utf-8"), value=encode_verdict(v),
                    headers=verdict_headers(v, self.model_info),
                )
        except Exception as exc:  # serialisation, buffer full, metadata unavailable: sorted by the publisher
            self._outcomes.put((work, exc))
            return
        sent = time.perf_counter()

        def ok(_metadata, w=work):
            metrics.STAGE_SECONDS.labels("publish").observe(time.perf_counter() - sent)
            self._outcomes.put((w, None))

        future.add_callback(ok)
        future.add_errback(lambda exc, w=work: self._outcomes.put((w, exc)))

    # -- the publisher thread ------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._health is not None:
                self._health.beat(LOOP_NAME)
            now = time.monotonic()
            while self._retries and self._retries[0][0] <= now:
                self._send(heapq.heappop(self._retries)[2])
            wait = 0.2 if not self._retries else max(0.0, min(0.2, self._retries[0][0] - now))
            self._report_readiness(now)
            try:
                work, exc = self._outcomes.get(timeout=wait)
            except queue.Empty:
                continue
            if exc is None:
                self._acknowledged(work)
            else:
                self._failed(work, exc)

    def _acknowledged(self, work: Work) -> None:
        self._failing.pop(work, None)
        if work.verdict is not None:
            v = work.verdict
            metrics.VERDICTS.labels(v.label, str(v.cached).lower()).inc()
            log.info("verdict", request_id=v.request_id, label=v.label, score=v.score, cached=v.cached)
            self.on_published(work)
        metrics.STAGE_SECONDS.labels("end_to_end").observe(time.monotonic() - work.received)
        self.on_done(work)

    def _failed(self, work: Work, exc: BaseException) -> None:
        if permanent(exc):
            if work.dead_letter is None:
                metrics.FAILURES.labels("publish_fatal").inc()
                reason = f"the verdict cannot be published: {type(exc).__name__}: {exc}"
                log.error("publish_impossible", where=work.where, error=str(exc))
                self.dead_letter(work, Rejected("unpublishable", reason[:1000]))
                return
            if too_large(exc) and work.value:
                log.error("dead_letter_too_large", where=work.where, bytes=len(work.value))
                work.value = None  # the headers still say where the original is
                self._send(work)
                return
            # a dead letter that cannot go anywhere is a setup problem (e.g. the topic name): retry
        metrics.FAILURES.labels("publish").inc()
        self._failing.setdefault(work, time.monotonic())
        delay = min(RETRY_MAX_S, self.backoff_s * 2 ** min(work.publishes - 1, 10))
        log.warning("publish_failed", where=work.where, attempt=work.publishes, retry_in_s=delay, error=str(exc))
        heapq.heappush(self._retries, (time.monotonic() + delay, next(self._seq), work))

    def _report_readiness(self, now: float) -> None:
        if self._health is not None:
            oldest = min(self._failing.values(), default=None)
            self._health.publishing = oldest is None or now - oldest < UNREADY_AFTER_S
