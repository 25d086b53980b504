"""`dfd-worker materialize`: copy the results topic into Redis, like a sink connector.

The worker's own Redis write is best effort; this process is what makes Redis converge to
the results topic. It consumes the results topic in its own group
(settings.materializer_group_id) and writes each verdict with `VerdictCache.put` (same keys,
same TTL as the worker). Writes are idempotent, so redelivery only rewrites.

At-least-once into Redis: an offset is committed only when the verdict at it, and every one
before it in its partition, was acknowledged by Redis. When a write fails the partitions are
rewound to the first unwritten verdict and paused; the process keeps polling (so it stays in
the group) and pings Redis every `RETRY_S` until it answers, then resumes from there. It
never skips a verdict and never commits past an unwritten one. A crash or a rebalance
rewrites at most one commit interval of verdicts.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

import structlog
from kafka import ConsumerRebalanceListener, KafkaConsumer
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from worker.service import metrics
from worker.service.cache import VerdictCache
from worker.service.health import HealthState, serve_until_signal
from worker.service.kafka_clients import make_consumer
from worker.service.messages import decode_verdict
from worker.settings import Settings

log = structlog.get_logger(__name__)

POLL_TIMEOUT_MS = 200
MAX_RECORDS = 500
RETRY_S = 1.0  # how often a Redis that refused a write is pinged again


class _Forget(ConsumerRebalanceListener):
    """Partitions that leave drop their uncommitted progress: the next owner starts from the last
    commit and rewrites the rest (idempotent). Nothing blocks here: kafka-python runs this on its
    network thread, and with the cooperative assignor only the partitions that move are passed."""

    def __init__(self, materializer: "Materializer"):
        self.materializer = materializer

    def on_partitions_revoked(self, revoked):
        metrics.REBALANCES.labels("revoked").inc()
        self.materializer._forget(revoked)

    def on_partitions_assigned(self, assigned):
        metrics.REBALANCES.labels("assigned").inc()
        log.info("partitions_assigned", partitions=sorted(tp.partition for tp in assigned))

    def on_partitions_lost(self, lost):
        metrics.REBALANCES.labels("lost").inc()
        self.materializer._forget(lost)


class Materializer:
    """The consume-write-commit loop. `run()` blocks until `stop()` (or SIGTERM)."""

    def __init__(
        self,
        settings: Settings,
        *,
        consumer: KafkaConsumer | None = None,
        cache: VerdictCache | None = None,
        health: HealthState | None = None,
    ):
        self.settings = settings
        self.consumer = consumer or make_consumer(settings, group_id=settings.materializer_group_id)
        self.cache = cache or VerdictCache.from_settings(settings)
        self.health = health or HealthState()
        self.health.models_loaded = True  # nothing to load
        self._written: dict[TopicPartition, int] = {}  # next offset to commit, per partition
        self._lock = threading.Lock()  # _written is also touched by the rebalance listener
        self._stop = threading.Event()
        self._waiting_for_redis = False
        self._last_commit = time.monotonic()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        self.consumer.subscribe([self.settings.results_topic], listener=_Forget(self))
        log.info("materializer_started", topic=self.settings.results_topic, group=self.settings.materializer_group_id)
        try:
            while not self._stop.is_set():
                self._step()
            self._commit(force=True)
        finally:
            try:
                self.consumer.close(autocommit=False)
            except Exception as exc:  # leaving the group is best effort; the session timeout covers it
                log.warning("consumer_close_failed", error=str(exc))
            log.info("materializer_stopped")

    def _step(self) -> None:
        if self._waiting_for_redis:
            self._wait_for_redis()
            return
        try:
            records = self.consumer.poll(timeout_ms=POLL_TIMEOUT_MS, max_records=MAX_RECORDS)
        except KafkaError as exc:
            log.warning("poll_failed", error=str(exc))
            self.health.tick(broker_reachable=False)
            time.sleep(0.5)
            return
        self.health.tick(broker_reachable=True)
        for tp, batch in records.items():
            if not self._write(tp, batch):
                # rewind every partition of this poll to its first unwritten record, wait for Redis
                self._rewind(records)
                self._pause()
                break
        self._commit()

    def _write(self, tp: TopicPartition, batch) -> bool:
        """Write one partition's records in order; False at the first write Redis did not acknowledge
        (the progress up to it is kept)."""
        for record in batch:
            try:
                verdict = decode_verdict(record.value)
            except Exception as exc:  # not a verdict (foreign or corrupt bytes): nothing to write, never retried
                metrics.MATERIALIZER_SKIPPED.labels("unreadable").inc()
                log.warning("not_a_verdict", partition=tp.partition, offset=record.offset, error=str(exc)[:200])
            else:
                if not self.cache.put(verdict):
                    return False
                metrics.MATERIALIZED.inc()
            with self._lock:
                self._written[tp] = record.offset + 1
        return True

    def _rewind(self, records: dict) -> None:
        """Seek back so the next fetch starts at the first unwritten record of each partition."""
        assigned = self.consumer.assignment()
        with self._lock:
            for tp, batch in records.items():
                if tp in assigned and batch:
                    self.consumer.seek(tp, max(batch[0].offset, self._written.get(tp, 0)))

    def _pause(self) -> None:
        self._waiting_for_redis = True
        self.consumer.pause(*self.consumer.assignment())
        metrics.MATERIALIZER_PAUSED.set(1)
        log.warning("redis_unavailable_pausing", retry_s=RETRY_S)

    def _wait_for_redis(self) -> None:
        """Keep the group membership (poll with everything paused) while Redis is away."""
        try:
            self.consumer.pause(*self.consumer.assignment())  # partitions assigned meanwhile
            records = self.consumer.poll(timeout_ms=int(RETRY_S * 1000))
            # a partition assigned during this very poll is not paused yet: hand its records back
            for tp, batch in records.items():
                if batch:
                    self.consumer.seek(tp, batch[0].offset)
            self.health.tick(broker_reachable=True)
        except KafkaError as exc:
            log.warning("poll_failed", error=str(exc))
            self.health.tick(broker_reachable=False)
            time.sleep(RETRY_S)
        self._commit()
        if self.cache.ping():
            self._waiting_for_redis = False
            self.consumer.resume(*self.consumer.paused())
            metrics.MATERIALIZER_PAUSED.set(0)
            log.info("redis_back_resuming")

    def _commit(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_commit < self.settings.materializer_commit_interval_s:
            return
        self._last_commit = now
        with self._lock:
            offsets = dict(self._written)
        if not offsets:
            return
        try:
            self.consumer.commit({tp: OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()})
        except Exception as exc:  # rebalance in progress, broker away: the next commit carries the progress
            metrics.FAILURES.labels("commit").inc()
            log.warning("commit_failed", error=str(exc))
            return
        metrics.COMMITS.inc()
        with self._lock:
            for tp, off in offsets.items():
                if self._written.get(tp) == off:
                    del self._written[tp]

    def _forget(self, partitions) -> None:
        with self._lock:
            for tp in partitions:
                self._written.pop(tp, None)


def run(settings: Settings) -> int:
    return serve_until_signal(settings.http_port, lambda health: Materializer(settings, health=health))


def main(argv: list[str] | None = None) -> int:
    """`dfd-worker materialize`: every option comes from DFD_* variables (see `dfd-worker settings`)."""
    argparse.ArgumentParser(
        prog="dfd-worker materialize",
        description="Copy the results topic into Redis (its own consumer group); configure it with DFD_* variables.",
    ).parse_args(sys.argv[1:] if argv is None else argv)
    from worker.logs import configure_logging

    try:
        settings = Settings.from_env()
    except (ValueError, TypeError) as exc:
        print(f"dfd-worker materialize: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format, settings.secret_values())
    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
