"""dfd-api's consumers of the results topic: each in its own consumer group, never the worker's.

`follow` polls a batch, hands it to a handler, then commits (at least once: a handler that
fails gets the same records again after a pause), until `stop` is set.
"""

from __future__ import annotations

import threading
from typing import Callable

import structlog
from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError

from worker.service.kafka_clients import make_consumer
from worker.settings import Settings

log = structlog.get_logger(__name__)

Handler = Callable[[list[ConsumerRecord]], None]


def follow(settings: Settings, group_id: str, handle: Handler, stop: threading.Event, max_records: int = 100) -> None:
    consumer = make_consumer(settings, group_id=group_id, max_poll_records=max_records)
    consumer.subscribe([settings.results_topic])
    log.info("results_consumer_started", group_id=group_id, topic=settings.results_topic)
    try:
        while not stop.is_set():
            records = [r for batch in consumer.poll(timeout_ms=500).values() for r in batch]
            if not records:
                continue
            try:
                handle(records)
            except Exception as exc:  # Redis down, a bug: retry the same records, never skip them
                log.warning("results_handler_failed", group_id=group_id, error=f"{type(exc).__name__}: {exc}")
                for tp, offset in _first_offsets(records).items():
                    consumer.seek(tp, offset)
                stop.wait(1.0)
                continue
            try:
                consumer.commit()
            except KafkaError as exc:  # a rebalance: the records are redelivered to the next owner
                log.warning("results_commit_failed", group_id=group_id, error=str(exc))
    finally:
        consumer.close()
        log.info("results_consumer_stopped", group_id=group_id)


def _first_offsets(records: list[ConsumerRecord]) -> dict[TopicPartition, int]:
    first: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        first[tp] = min(first.get(tp, r.offset), r.offset)
    return first


def start_thread(settings: Settings, group_id: str, handle: Handler, stop: threading.Event) -> threading.Thread:
    """`follow` in a daemon thread that restarts it after an unexpected failure."""

    def run() -> None:
        while not stop.is_set():
            try:
                follow(settings, group_id, handle, stop)
            except Exception:
                log.exception("results_consumer_crashed", group_id=group_id)
                stop.wait(2.0)

    thread = threading.Thread(target=run, name=f"results-{group_id}", daemon=True)
    thread.start()
    return thread
