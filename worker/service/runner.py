"""The streaming worker: consume scan requests, micro-batch the models, publish verdicts, commit.

Flow of one message (threads in brackets):
    poll [main] -> parse; bad ones -> dead-letter topic
    -> scanner.load [decode pool] -> cached/error Verdict, or DecodedVideo -> micro-batcher
    -> scanner.analyze over several videos [batcher] -> Verdict
    -> produce to the results topic [kafka-python's sender] -> on ack: Redis [acker]
    -> offset marked done [main] -> committed up to the oldest unfinished offset [main].

At-least-once: an offset is committed only when it and everything before it in its
partition has its verdict (or dead letter) acknowledged by the broker. The window of
requests in flight is bounded by settings.max_in_flight: beyond it the partitions are
paused. SIGTERM and rebalances drain in-flight work within settings.drain_grace_s,
commit, then let go; work not finished by then is redelivered to whoever owns it next.
"""

from __future__ import annotations

import argparse
import math
import queue
import signal
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import structlog
from kafka import AsyncConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from kafka.net.selector import KernelEvent
from kafka.structs import OffsetAndMetadata, TopicPartition

from worker.service import metrics
from worker.service.cache import VerdictCache
from worker.service.dead_letter import send_dead_letter
from worker.service.health import HealthServer, HealthState
from worker.service.kafka_clients import make_consumer, make_producer
from worker.service.messages import Rejected, encode_verdict, parse_request, verdict_headers
from worker.service.offsets import OffsetTracker
from worker.settings import Settings
from worker.types import DecodedVideo, ScanError, ScanRequest, Verdict

log = structlog.get_logger(__name__)

POLL_TIMEOUT_MS = 100
COMMIT_INTERVAL_S = 1.0  # commits are batched: at most one per second, plus one at every drain
LAG_INTERVAL_S = 5.0
PUBLISH_RETRY_MAX_S = 10.0  # cap of the backoff between attempts to publish one verdict


@dataclass
class _Work:
    """One consumed message on its way through the worker."""

    tp: TopicPartition
    offset: int
    key: bytes | None
    received: float = field(default_factory=time.monotonic)
    request: ScanRequest | None = None
    verdict: Verdict | None = None  # set once answered
    dead_letter: Rejected | None = None
    value: bytes | None = None  # original bytes, kept only for dead letters
    attempts: int = 0


class _Rebalance(AsyncConsumerRebalanceListener):
    """Rebalance hooks. kafka-python 3 runs them on its network thread, where blocking calls are
    refused and would stall heartbeats: they are coroutines, and the revoke drain yields to the
    client's loop while it waits (`_loop_sleep`), so the member stays alive in the group."""

    def __init__(self, runner: "Runner"):
        self.runner = runner

    async def on_partitions_revoked(self, revoked):
        await self.runner._on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned):
        self.runner._on_assigned(list(assigned))

    async def on_partitions_lost(self, lost):
        # evicted from the group: the partitions already belong to someone else, so committing
        # would fail; drop them and let the new owner redo the unfinished work
        self.runner._on_lost(list(lost))


def _loop_sleep(seconds: float) -> KernelEvent:
    """An awaitable pause on kafka-python's own event loop (what its coordinator uses as
    `net.sleep`); kafka-python is pinned, as this is part of its 3.x internals."""
    return KernelEvent("_sleep", seconds)


class Runner:
    """The consume loop and its helper threads. `run()` blocks until `stop()` (or SIGTERM) and a drain."""

    def __init__(
        self,
        settings: Settings,
        scanner: Any,
        *,
        consumer: KafkaConsumer | None = None,
        producer: KafkaProducer | None = None,
        cache: VerdictCache | None = None,
        health: HealthState | None = None,
    ):
        self.settings = settings
        self.scanner = scanner
        self.consumer = consumer or make_consumer(settings)
        self.producer = producer or make_producer(settings)
        self.cache = cache or VerdictCache.from_settings(settings)
        self.health = health or HealthState()
        self.health.models_loaded = True
        self.tracker = OffsetTracker()
        # the rebalance hooks run on kafka-python's network thread, the rest on the main thread
        self._lock = threading.RLock()
        self._pool = ThreadPoolExecutor(max_workers=max(1, settings.decode_threads), thread_name_prefix="load")
        self._decoded: queue.Queue[tuple[_Work, DecodedVideo]] = queue.Queue()
        self._acks: queue.Queue[tuple[_Work, Exception | None]] = queue.Queue()
        self._done: queue.Queue[_Work] = queue.Queue()
        self._stop = threading.Event()
        self._threads_stop = threading.Event()
        self._paused = False
        self._last_commit = 0.0
        self._last_lag = 0.0
        self._threads = [
            threading.Thread(target=self._batch_loop, name="batcher", daemon=True),
            threading.Thread(target=self._ack_loop, name="acker", daemon=True),
        ]

    # -- lifecycle -----------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to drain and leave; safe from signal handlers and other threads."""
        self._stop.set()

    def run(self) -> None:
        for t in self._threads:
            t.start()
        self.consumer.subscribe([self.settings.requests_topic], listener=_Rebalance(self))
        log.info("worker_started", topic=self.settings.requests_topic, group=self.settings.group_id)
        try:
            while not self._stop.is_set():
                self._step()
            with self._lock:
                partitions = self.tracker.partitions()
            self._drain(partitions, reason="shutdown")
        finally:
            self._close()

    def _step(self) -> None:
        self._collect_done()
        self._maybe_commit()
        self._flow_control()
        room = max(1, self.settings.max_in_flight - self._pending())
        try:
            records = self.consumer.poll(timeout_ms=POLL_TIMEOUT_MS, max_records=room)
        except KafkaError as exc:
            log.warning("poll_failed", error=str(exc))
            self.health.tick(broker_reachable=False)
            time.sleep(0.5)
            return
        for tp, messages in records.items():
            for msg in messages:
                self._accept(tp, msg)
        now = time.monotonic()
        if now - self._last_lag >= LAG_INTERVAL_S:
            self._last_lag = now
            self._report_lag()
        else:
            self.health.tick()

    def _close(self) -> None:
        self._threads_stop.set()
        for t in self._threads:
            t.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        try:
            self.consumer.close(autocommit=False)
        except Exception as exc:  # leaving the group is best effort; the session timeout covers it
            log.warning("consumer_close_failed", error=str(exc))
        try:
            self.producer.flush(timeout=5)
            self.producer.close(timeout=5)
        except Exception as exc:
            log.warning("producer_close_failed", error=str(exc))
        metrics.IN_FLIGHT.set(0)
        log.info("worker_stopped")

    # -- intake (main thread) ----------------------------------------------------------
    def _accept(self, tp: TopicPartition, msg) -> None:
        metrics.MESSAGES_CONSUMED.inc()
        with self._lock:
            try:
                self.tracker.add(tp, msg.offset)
            except ValueError:
                # the position went back (offset reset): what was pending there will be redelivered
                log.warning("offset_rewound", partition=tp.partition, offset=msg.offset, dropped=self.tracker.forget(tp))
                self.tracker.add(tp, msg.offset)
            metrics.IN_FLIGHT.set(self.tracker.pending())
        work = _Work(tp, msg.offset, msg.key)
        parsed = parse_request(msg.value, self.settings.max_message_bytes)
        if isinstance(parsed, Rejected):
            work.dead_letter, work.value = parsed, msg.value
            log.warning("dead_letter", code=parsed.code, reason=parsed.reason, partition=tp.partition, offset=msg.offset)
            self._send(work)
            return
        work.request = parsed
        future = self._pool.submit(self._load, parsed)
        future.add_done_callback(lambda f, w=work: self._loaded(w, f))

    def _load(self, request: ScanRequest) -> DecodedVideo | Verdict:
        with structlog.contextvars.bound_contextvars(request_id=request.request_id):
            t0 = time.perf_counter()
            out = self.scanner.load(request, cache_lookup=self._cache_lookup)
            metrics.STAGE_SECONDS.labels("load").observe(time.perf_counter() - t0)
            return out

    def _cache_lookup(self, content_sha256: str) -> Verdict | None:
        hit = self.cache.get_by_content(content_sha256, self.scanner.info.sha256)
        if hit is not None:
            metrics.CACHE_HITS.inc()
        return hit

    def _loaded(self, work: _Work, future: Future) -> None:
        """Runs in the decode thread that finished (or the main thread if cancelled)."""
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:  # Scanner.load never raises for bad input: this is a bug, answer it anyway
            log.error("load_crashed", request_id=work.request.request_id, error=repr(exc))
            self._answer(work, Verdict.error(work.request, ScanError("internal_error", f"{type(exc).__name__}: {exc}")))
            return
        result = future.result()
        if isinstance(result, Verdict):
            self._answer(work, result)
        else:
            self._decoded.put((work, result))

    # -- micro-batching (batcher thread) ------------------------------------------------
    def _batch_loop(self) -> None:
        wait_s = self.settings.batch_max_wait_ms / 1000.0
        while not self._threads_stop.is_set():
            try:
                first = self._decoded.get(timeout=0.2)
            except queue.Empty:
                continue
            batch = [first]
            frames = len(first[1].frames)
            deadline = time.monotonic() + wait_s
            # Fill the batch up to max_batch_frames, but never hold a video longer than the wait.
            while frames < self.settings.max_batch_frames:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self._decoded.get(timeout=remaining)
                except queue.Empty:
                    break
                batch.append(item)
                frames += len(item[1].frames)
            metrics.BATCH_VIDEOS.observe(len(batch))
            metrics.BATCH_FRAMES.observe(frames)
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
                self._answer(work, verdict)

    # -- publishing (any thread) and acknowledgement (acker thread) ------------------------
    def _answer(self, work: _Work, verdict: Verdict) -> None:
        work.verdict = verdict
        if verdict.label == "error" and verdict.error_code:
            metrics.FAILURES.labels(f"scan_error_{verdict.error_code}").inc()
        self._send(work)

    def _send(self, work: _Work) -> None:
        """Produce the verdict or dead letter; the outcome arrives on the acker's queue."""
        work.attempts += 1
        try:
            if work.dead_letter is not None:
                future = send_dead_letter(
                    self.producer, self.settings.dead_letter_topic, work.dead_letter, key=work.key, value=work.value,
                    topic=work.tp.topic, partition=work.tp.partition, offset=work.offset,
                )
            else:
                v = work.verdict
                future = self.producer.send(
                    self.settings.results_topic,
                    key=v.request_id.encode("utf-8"),
                    value=encode_verdict(v),
                    headers=verdict_headers(v, self.scanner.info),
                )
        except Exception as exc:  # buffer full or metadata unavailable: retried by the acker
            self._acks.put((work, exc))
            return
        sent = time.perf_counter()

        def ok(_metadata, w=work):
            metrics.STAGE_SECONDS.labels("publish").observe(time.perf_counter() - sent)
            self._acks.put((w, None))

        future.add_callback(ok)
        future.add_errback(lambda exc, w=work: self._acks.put((w, exc)))

    def _ack_loop(self) -> None:
        while not self._threads_stop.is_set():
            try:
                work, exc = self._acks.get(timeout=0.2)
            except queue.Empty:
                continue
            if exc is not None:
                # Never drop an answer: back off and publish again. Its offset stays uncommitted,
                # and the full window pauses consumption while the broker is away.
                metrics.FAILURES.labels("publish").inc()
                delay = min(PUBLISH_RETRY_MAX_S, self.settings.retry_backoff_s * 2 ** min(work.attempts - 1, 10))
                log.warning("publish_failed", offset=work.offset, attempt=work.attempts, retry_in_s=delay, error=str(exc))
                threading.Timer(delay, self._send, args=(work,)).start()
                continue
            if work.verdict is not None:
                t0 = time.perf_counter()
                self.cache.put(work.verdict)
                metrics.STAGE_SECONDS.labels("cache_write").observe(time.perf_counter() - t0)
                metrics.VERDICTS.labels(work.verdict.label, str(work.verdict.cached).lower()).inc()
                log.info(
                    "verdict", request_id=work.verdict.request_id, label=work.verdict.label,
                    score=work.verdict.score, cached=work.verdict.cached,
                )
            metrics.STAGE_SECONDS.labels("end_to_end").observe(time.monotonic() - work.received)
            self._done.put(work)

    # -- offsets (main thread) ------------------------------------------------------------
    def _collect_done(self) -> int:
        n = 0
        with self._lock:
            while True:
                try:
                    work = self._done.get_nowait()
                except queue.Empty:
                    break
                if self.tracker.done(work.tp, work.offset):
                    n += 1
            metrics.IN_FLIGHT.set(self.tracker.pending())
        return n

    def _pending(self, partitions: list[TopicPartition] | None = None) -> int:
        with self._lock:
            if partitions is None:
                return self.tracker.pending()
            return sum(self.tracker.pending(tp) for tp in partitions)

    def _to_commit(self, partitions: list[TopicPartition] | None) -> dict[TopicPartition, int]:
        with self._lock:
            offsets = self.tracker.to_commit()
        if partitions is not None:
            offsets = {tp: off for tp, off in offsets.items() if tp in partitions}
        return offsets

    def _committed(self, offsets: dict[TopicPartition, int]) -> None:
        metrics.COMMITS.inc()
        with self._lock:
            for tp, off in offsets.items():
                self.tracker.committed(tp, off)

    def _maybe_commit(self, force: bool = False, partitions: list[TopicPartition] | None = None) -> None:
        now = time.monotonic()
        if not force and now - self._last_commit < COMMIT_INTERVAL_S:
            return
        self._last_commit = now
        offsets = self._to_commit(partitions)
        if not offsets:
            return
        try:
            self.consumer.commit(_commit_request(offsets))
        except Exception as exc:  # rebalance in progress, broker away: the next commit carries the progress
            metrics.FAILURES.labels("commit").inc()
            log.warning("commit_failed", error=str(exc))
            return
        self._committed(offsets)
        self.health.tick(broker_reachable=True)

    def _flow_control(self) -> None:
        full = self._pending() >= self.settings.max_in_flight
        assigned = self.consumer.assignment()
        if full and not self._paused:
            self.consumer.pause(*assigned)
            self._paused = True
        elif not full and self._paused:
            self.consumer.resume(*self.consumer.paused())
            self._paused = False
        elif full and assigned - self.consumer.paused():
            self.consumer.pause(*assigned)  # partitions assigned while paused
        metrics.PAUSED.set(1 if self._paused else 0)

    def _report_lag(self) -> None:
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)  # from fetch responses; None until the first fetch
            try:
                position = self.consumer.position(tp, timeout_ms=1000)
            except Exception:
                position = None
            if high is not None and position is not None:
                metrics.CONSUMER_LAG.labels(f"{tp.topic}:{tp.partition}").set(max(0, high - position))
        self.health.tick(broker_reachable=self._broker_reachable())

    def _broker_reachable(self) -> bool:
        """The group coordinator answered a heartbeat within the session timeout (the consumer's
        `last-heartbeat-seconds-ago` metric); before the first heartbeat, a completed join counts."""
        try:
            ago = self.consumer.metrics().get("consumer-coordinator-metrics", {}).get("last-heartbeat-seconds-ago")
        except Exception:
            ago = None
        if ago is not None and math.isfinite(ago):
            return ago * 1000 < self.settings.kafka_session_timeout_ms
        return bool(self.consumer.assignment())

    # -- draining: on shutdown (main thread) and on revocation (kafka-python's network thread) ------
    def _drain(self, partitions: list[TopicPartition], reason: str) -> None:
        """Shutdown: wait for in-flight work within the grace period, commit, forget."""
        if not partitions:
            return
        deadline = time.monotonic() + self.settings.drain_grace_s
        log.info("draining", reason=reason, in_flight=self._pending(partitions), grace_s=self.settings.drain_grace_s)
        while self._pending(partitions) and time.monotonic() < deadline:
            self._collect_done()
            time.sleep(0.02)
        self._collect_done()
        self._maybe_commit(force=True, partitions=partitions)
        self._forget(partitions, reason)

    async def _on_revoked(self, revoked: list[TopicPartition]) -> None:
        """Rebalance: the same drain, waiting on the client's loop so heartbeats go on, and an
        asynchronous commit awaited there (the blocking one is refused on that thread)."""
        metrics.REBALANCES.labels("revoked").inc()
        with self._lock:
            partitions = [tp for tp in revoked if tp in self.tracker.partitions()]
        if partitions:
            deadline = time.monotonic() + self.settings.drain_grace_s
            log.info("draining", reason="rebalance", in_flight=self._pending(partitions), grace_s=self.settings.drain_grace_s)
            while self._pending(partitions) and time.monotonic() < deadline:
                self._collect_done()
                await _loop_sleep(0.02)
            self._collect_done()
            offsets = self._to_commit(partitions)
            if offsets:
                try:
                    await self.consumer.commit_async(_commit_request(offsets))
                    self._committed(offsets)
                except Exception as exc:  # the new owner starts from the previous commit: duplicates, no loss
                    metrics.FAILURES.labels("commit").inc()
                    log.warning("commit_failed", error=str(exc), during="rebalance")
            self._forget(partitions, "rebalance")
        for tp in revoked:
            try:
                metrics.CONSUMER_LAG.remove(f"{tp.topic}:{tp.partition}")
            except KeyError:  # no lag reported for it yet
                pass

    def _forget(self, partitions: list[TopicPartition], reason: str) -> None:
        with self._lock:
            left = sum(self.tracker.forget(tp) for tp in partitions)
            metrics.IN_FLIGHT.set(self.tracker.pending())
        if left:
            log.warning("drain_incomplete", reason=reason, abandoned=left)
        log.info("drained", reason=reason, abandoned=left)

    def _on_assigned(self, assigned: list[TopicPartition]) -> None:
        metrics.REBALANCES.labels("assigned").inc()
        log.info("partitions_assigned", partitions=sorted(tp.partition for tp in assigned))
        self.health.tick(broker_reachable=True)

    def _on_lost(self, lost: list[TopicPartition]) -> None:
        metrics.REBALANCES.labels("lost").inc()
        with self._lock:
            dropped = sum(self.tracker.forget(tp) for tp in lost)
        log.warning("partitions_lost", partitions=sorted(tp.partition for tp in lost), abandoned=dropped)


def _commit_request(offsets: dict[TopicPartition, int]) -> dict[TopicPartition, OffsetAndMetadata]:
    return {tp: OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()}


def run(settings: Settings) -> int:
    """Load the models, serve health endpoints, consume until SIGTERM/SIGINT. Returns an exit code."""
    from worker.pipeline.scanner import Scanner

    health = HealthState()
    server = None
    if settings.http_port:
        server = HealthServer(health, settings.http_port).start()
        log.info("health_endpoints", port=server.port)
    try:
        scanner = Scanner(settings)
    except Exception as exc:
        log.error("models_not_loaded", error=str(exc))
        if server:
            server.stop()
        return 4
    runner = Runner(settings, scanner, health=health)

    def on_signal(signum, _frame):
        log.info("signal_received", signal=signal.Signals(signum).name)
        runner.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        runner.run()
    finally:
        if server:
            server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    """`dfd-worker run`: every option comes from DFD_* variables (see `dfd-worker settings`)."""
    parser = argparse.ArgumentParser(
        prog="dfd-worker run", description="Run the streaming worker; configure it with DFD_* environment variables."
    )
    parser.add_argument("--model-dir", help="model bundle folder (default: DFD_MODEL_DIR)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from worker.logs import configure_logging

    try:
        settings = Settings.from_env()
    except (ValueError, TypeError) as exc:
        print(f"dfd-worker run: {exc}", file=sys.stderr)
        return 2
    if args.model_dir:
        settings = settings.replace(model_dir=args.model_dir)
    configure_logging(settings.log_level, settings.log_format, settings.secret_values())
    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
