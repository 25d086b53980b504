"""The load step: answer a redelivery from its known verdict, count the attempt, fetch and decode.

Runs in a thread pool (settings.decode_threads). For each request, in order:
1. Idempotent redelivery: a verdict already known for this request id, URI and model (the
   Redis key `{prefix}:verdict:req:{id}`) is republished as it is, without fetching or
   decoding (`dfd_verdicts_replayed_total`).
2. Poison containment: the attempt is counted in Redis before anything risky runs
   (`attempts.py`); a message whose handling started more than settings.max_attempts times is
   dead-lettered with code `poison`.
3. `scanner.load`: a cached or error verdict goes to the publisher, frames to the batcher.
Verdicts from here and from the batcher pass `answer`: one that says the attempt crashed or
timed out (error codes in RETRY_CODES) is not published but tried again, up to the limit.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import structlog

from worker.service import metrics
from worker.service.attempts import AttemptCounter
from worker.service.messages import Rejected
from worker.service.work import Work
from worker.types import DecodedVideo, ScanError, Verdict

log = structlog.get_logger(__name__)

# verdicts that say the attempt failed, not the input: decoder child killed or timed out
RETRY_CODES = frozenset({"decoder_crashed", "timeout"})


class LoadStep:
    def __init__(
        self,
        scanner: Any,
        *,
        threads: int,
        max_attempts: int,
        known_verdict: Callable[[str], Verdict | None],
        content_lookup: Callable[[str], Verdict | None],
        attempts: AttemptCounter | None,
        to_batcher: Callable[[Work, DecodedVideo], None],
        publish: Callable[[Work, Verdict], None],
        dead_letter: Callable[[Work, Rejected], None],
    ):
        self.scanner = scanner
        self.max_attempts = max(1, max_attempts)
        self.known_verdict = known_verdict
        self.content_lookup = content_lookup
        self.attempts = attempts
        self.to_batcher = to_batcher
        self.publish = publish
        self.dead_letter = dead_letter
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="load")
        self._handling: dict[Work, float] = {}  # work -> when its current attempt started
        self._lock = threading.Lock()

    def submit(self, work: Work) -> None:
        self._pool.submit(self._guarded, work)

    def oldest_started(self) -> float | None:
        """Start of the oldest attempt still in handling (load or analysis), for liveness."""
        with self._lock:
            return min(self._handling.values(), default=None)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- in a pool thread ----------------------------------------------------------------
    def _guarded(self, work: Work) -> None:
        try:
            self._handle(work)
        except Exception as exc:  # a bug here must still answer the request
            log.exception("load_crashed", request_id=work.request.request_id)
            self.answer(work, Verdict.error(work.request, ScanError("internal_error", f"{type(exc).__name__}: {exc}")))

    def _handle(self, work: Work) -> None:
        request = work.request
        known = self.known_verdict(request.request_id)
        if self._replayable(known, request.uri):
            metrics.VERDICTS_REPLAYED.inc()
            log.info("verdict_replayed", request_id=request.request_id, label=known.label)
            self.publish(work, known)
            return
        counted = None
        if self.attempts is not None:
            counted = self.attempts.start(work.tp.topic, work.tp.partition, work.offset)
        work.attempts = max(work.attempts + 1, counted or 0)
        if work.attempts > self.max_attempts:
            self._poison(work, work.attempts - 1, "each crashed, was killed or timed out")
            return
        with self._lock:
            self._handling[work] = time.monotonic()
        with structlog.contextvars.bound_contextvars(request_id=request.request_id):
            t0 = time.perf_counter()
            out = self.scanner.load(request, cache_lookup=self.content_lookup)
            metrics.STAGE_SECONDS.labels("load").observe(time.perf_counter() - t0)
        if isinstance(out, Verdict):
            self.answer(work, out)
        else:
            self.to_batcher(work, out)

    def _replayable(self, known: Verdict | None, uri: str) -> bool:
        info = getattr(self.scanner, "info", None)
        return (
            known is not None and info is not None and known.model is not None
            and known.model.sha256 == info.sha256 and known.uri == uri and known.error_code not in RETRY_CODES
        )

    # -- from a pool thread or the batcher -------------------------------------------------
    def answer(self, work: Work, verdict: Verdict) -> None:
        with self._lock:
            self._handling.pop(work, None)
        if verdict.error_code in RETRY_CODES:
            metrics.FAILURES.labels(f"attempt_{verdict.error_code}").inc()
            if work.attempts >= self.max_attempts:
                self._poison(work, work.attempts, f"the last: {verdict.error_code}: {verdict.reason}")
            else:
                log.warning("attempt_failed", request_id=work.request.request_id, code=verdict.error_code, attempt=work.attempts)
                self.submit(work)
            return
        self.publish(work, verdict)

    def _poison(self, work: Work, tried: int, why: str) -> None:
        reason = f"{tried} handling attempts (limit {self.max_attempts}) ended without an answer; {why}"
        log.error("poison", request_id=work.request.request_id, where=work.where, reason=reason)
        self.dead_letter(work, Rejected("poison", reason))
