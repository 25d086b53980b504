"""The streaming worker: consume scan requests, micro-batch the models, publish verdicts, commit.

The flow of one message is a chain of small steps, each in its own module and testable
without a broker (threads in brackets):

    poll [main] -> Intake (intake.py): offset enters the window, body parsed; bad -> dead letter
    -> LoadStep (loading.py) [load pool]: known verdict replayed | attempt counted (poison) |
       scanner.load -> cached/error Verdict, or frames -> Batcher
    -> Batcher (batching.py) [batcher]: scanner.analyze over several videos -> Verdict
    -> Publisher (publishing.py) [publisher]: produce; on ack -> RedisWriter (redis_writer.py)
       [redis_writer, never waited for] and the offset is done; failures sorted by kind
    -> CommitPath (commits.py) [main, or the network thread in a rebalance]: commits, in
       order, up to the oldest unfinished offset of each partition.
    Rebalances and shutdown drain through rebalance.py.

At-least-once with bounded redo: an offset is committed only when it and everything before
it in its partition is answered (verdict or dead letter acknowledged by the broker). The
window counts every message received and not yet committed, answered or not, and is bounded
by settings.max_in_flight: at the limit the partitions are paused, so a crash redoes at most
that many requests per worker. This module wires the steps and runs the main loop: poll,
flow control, commit policy, lag and health.
"""

from __future__ import annotations

import argparse
import math
import sys
import threading
import time
from typing import Any

import structlog
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError

from worker.service import metrics
from worker.service.attempts import AttemptCounter
from worker.service.batching import Batcher
from worker.service.cache import VerdictCache
from worker.service.commits import CommitPath
from worker.service.health import HealthState, serve_until_signal
from worker.service.intake import Intake
from worker.service.kafka_clients import make_consumer, make_producer
from worker.service.loading import LoadStep
from worker.service.publishing import Publisher
from worker.service.rebalance import RebalanceHandler, drain
from worker.service.redis_writer import RedisWriter
from worker.service.work import Work
from worker.settings import Settings
from worker.types import Verdict

log = structlog.get_logger(__name__)

POLL_TIMEOUT_MS = 100
LAG_INTERVAL_S = 5.0
ANALYSIS_MARGIN_S = 120.0  # on top of the decode and download deadlines, before a request counts as stuck


def handling_limit_s(settings: Settings) -> float:
    """How long one request may be in handling before the worker counts as stuck (liveness)."""
    return settings.decode_timeout_s + settings.http_total_timeout_s + ANALYSIS_MARGIN_S


class Runner:
    """The main loop and the steps it drives. `run()` blocks until `stop()` (or SIGTERM) and a drain."""

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
        self.health.handling_limit_s = handling_limit_s(settings)
        self.health.models_loaded = True
        self._stop = threading.Event()
        self._paused = False
        self._last_lag = 0.0

        self.commits = CommitPath(self.consumer, window=max(1, settings.max_in_flight))
        self.redis_writer = RedisWriter(self.health)
        attempts = AttemptCounter(self.cache.client, settings.redis_key_prefix, settings.redis_ttl_s)
        self.publisher = Publisher(
            self.producer, results_topic=settings.results_topic, dead_letter_topic=settings.dead_letter_topic,
            model_info=getattr(scanner, "info", None), backoff_s=settings.retry_backoff_s,
            on_published=self._write_redis, on_done=lambda w: self.commits.done(w.tp, w.offset), health=self.health,
        )
        self.loader = LoadStep(
            scanner, threads=settings.decode_threads, max_attempts=settings.max_attempts,
            known_verdict=self.cache.get, content_lookup=self._content_lookup, attempts=attempts,
            to_batcher=lambda w, v: self.batcher.submit(w, v), publish=self.publisher.publish,
            dead_letter=self.publisher.dead_letter,
        )
        self.batcher = Batcher(
            scanner, max_frames=settings.max_batch_frames, max_wait_s=settings.batch_max_wait_ms / 1000.0,
            answer=self.loader.answer, health=self.health,
        )
        self.intake = Intake(
            self.commits, max_message_bytes=settings.max_message_bytes,
            load=self.loader.submit, dead_letter=self.publisher.dead_letter,
        )
        self.health.watch_handling(self.loader.oldest_started)
        self._attempts = attempts

    # -- lifecycle -----------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to drain and leave; safe from signal handlers and other threads."""
        self._stop.set()

    def run(self) -> None:
        start_media = getattr(self.scanner, "start_media", None)  # test doubles have no media children
        if start_media is not None:
            start_media()
        self.redis_writer.start()
        self.publisher.start()
        self.batcher.start()
        self.consumer.subscribe(
            [self.settings.requests_topic],
            listener=RebalanceHandler(self.commits, self.settings.drain_grace_s, self.health),
        )
        log.info("worker_started", topic=self.settings.requests_topic, group=self.settings.group_id)
        try:
            while not self._stop.is_set():
                self._step()
            drain(self.commits, self.commits.partitions(), self.settings.drain_grace_s, reason="shutdown")
        finally:
            self._close()

    def _step(self) -> None:
        if self.commits.due():
            self.commits.commit()
        self._flow_control()
        room = self.commits.room()
        try:
            records = self.consumer.poll(timeout_ms=POLL_TIMEOUT_MS, max_records=max(1, room))
        except KafkaError as exc:
            log.warning("poll_failed", error=str(exc))
            self.health.tick(broker_reachable=False)
            time.sleep(0.5)
            return
        for tp, messages in records.items():
            for msg in messages:
                if room <= 0:
                    # beyond the window (a partition assigned during this poll was not paused yet):
                    # give the rest back, to be read again once there is room
                    self.consumer.seek(tp, msg.offset)
                    break
                self.intake.submit(tp, msg.offset, msg.key, msg.value)
                room -= 1
        now = time.monotonic()
        if now - self._last_lag >= LAG_INTERVAL_S:
            self._last_lag = now
            self._report_lag()
        else:
            self.health.tick()

    def _close(self) -> None:
        self.loader.close()
        self.batcher.close()
        self.publisher.close()
        try:
            self.consumer.close(autocommit=False)
        except Exception as exc:  # leaving the group is best effort; the session timeout covers it
            log.warning("consumer_close_failed", error=str(exc))
        try:
            self.producer.flush(timeout=5)
            self.producer.close(timeout=5)
        except Exception as exc:
            log.warning("producer_close_failed", error=str(exc))
        self.redis_writer.close()
        metrics.IN_FLIGHT.set(0)
        log.info("worker_stopped")

    # -- Redis (off the commit path) ----------------------------------------------------
    def _content_lookup(self, content_sha256: str) -> Verdict | None:
        hit = self.cache.get_by_content(content_sha256, self.scanner.info.sha256)
        if hit is not None:
            metrics.CACHE_HITS.inc()
        return hit

    def _write_redis(self, work: Work) -> None:
        verdict, tp, offset = work.verdict, work.tp, work.offset

        def write():
            t0 = time.perf_counter()
            self.cache.put(verdict)
            metrics.STAGE_SECONDS.labels("cache_write").observe(time.perf_counter() - t0)
            if work.attempts:
                self._attempts.clear(tp.topic, tp.partition, offset)

        self.redis_writer.submit(write)

    # -- flow control, lag, readiness (main thread) ----------------------------------------
    def _flow_control(self) -> None:
        full = self.commits.room() == 0
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


def run(settings: Settings) -> int:
    """Load the models, serve health endpoints, consume until SIGTERM/SIGINT. Returns an exit code."""
    from worker.pipeline.scanner import Scanner

    return serve_until_signal(settings.http_port, lambda health: Runner(settings, Scanner(settings), health=health))


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
