"""Library for other services: submit videos to scan, wait for their verdicts, read cached ones.

    client = ScanClient(Settings.from_env())
    ids = client.submit(["https://example.com/a.mp4", "file:///videos/b.mp4"])
    for verdict in client.wait(ids, timeout_s=120):
        print(verdict.request_id, verdict.label)

Verdicts are found in Redis (the worker writes them there) and, when Redis is away, by
reading the results topic from the beginning.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Iterable, Iterator

import redis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from worker.service.cache import VerdictCache, connect, content_key
from worker.service.kafka_clients import common_config, make_producer
from worker.service.messages import decode_verdict, encode_request
from worker.settings import Settings
from worker.types import ScanRequest, Verdict


def new_request_id() -> str:
    return uuid.uuid4().hex


class ScanClient:
    def __init__(self, settings: Settings | None = None, *, producer: KafkaProducer | None = None):
        self.settings = settings or Settings.from_env()
        self._producer = producer
        self._redis = connect(self.settings)
        self.cache = VerdictCache(self._redis, self.settings.redis_key_prefix, self.settings.redis_ttl_s)

    @property
    def producer(self) -> KafkaProducer:
        if self._producer is None:
            self._producer = make_producer(self.settings)
        return self._producer

    # -- submitting ---------------------------------------------------------------------------
    def submit(
        self, items: Iterable[str | ScanRequest], metadata: dict[str, Any] | None = None, timeout_s: float = 30
    ) -> list[str]:
        """Publish one request per URI (or ScanRequest) and wait for the broker's acks; returns the request ids."""
        futures, ids = [], []
        for item in items:
            request = item if isinstance(item, ScanRequest) else ScanRequest(new_request_id(), item, None, dict(metadata or {}))
            futures.append(
                self.producer.send(
                    self.settings.requests_topic, key=request.request_id.encode(), value=encode_request(request)
                )
            )
            ids.append(request.request_id)
        self.producer.flush(timeout=timeout_s)
        for f in futures:
            f.get(timeout=timeout_s)  # raises if the broker refused it
        return ids

    def submit_raw(self, value: bytes, key: bytes | None = None, timeout_s: float = 30) -> None:
        """Publish bytes as they are (for tools and tests of the worker's validation)."""
        self.producer.send(self.settings.requests_topic, key=key, value=value).get(timeout=timeout_s)

    # -- reading verdicts --------------------------------------------------------------------
    def get(self, request_id: str) -> Verdict | None:
        """The cached verdict of a request, or None (not done yet, expired, or Redis away)."""
        return self.cache.get(request_id)

    def get_by_hash(self, content_sha256: str, model_sha256: str | None = None) -> Verdict | None:
        """A cached verdict for this content: by the given model, or the newest by any model."""
        content_sha256 = content_sha256.lower()
        if model_sha256:
            return self.cache.get_by_content(content_sha256, model_sha256)
        pattern = content_key(self.settings.redis_key_prefix, content_sha256, "") + "*"
        found = [v for key in self._redis.scan_iter(match=pattern, count=100) if (v := self._read_key(key))]
        return max(found, key=lambda v: v.created_at, default=None)

    def _read_key(self, key: bytes) -> Verdict | None:
        body = self._redis.get(key)
        return decode_verdict(body) if body else None

    def wait(self, request_ids: Iterable[str], timeout_s: float = 300, poll_s: float = 0.2) -> Iterator[Verdict]:
        """Yield each request's verdict as it arrives (any order); stops at `timeout_s`.

        Polls Redis; if Redis fails, switches to reading the results topic.
        """
        pending = list(dict.fromkeys(request_ids))
        deadline = time.monotonic() + timeout_s
        reader: KafkaConsumer | None = None
        try:
            while pending and time.monotonic() < deadline:
                if reader is None:
                    try:
                        keys = [f"{self.settings.redis_key_prefix}:verdict:req:{rid}" for rid in pending]
                        bodies = self._redis.mget(keys)
                    except redis.RedisError:
                        reader = self._results_reader()
                        continue
                    for rid, body in zip(list(pending), bodies):
                        if body is not None:
                            pending.remove(rid)
                            yield decode_verdict(body)
                    if pending:
                        time.sleep(poll_s)
                else:
                    for verdict in self._poll_results(reader, 500):
                        if verdict.request_id in pending:
                            pending.remove(verdict.request_id)
                            yield verdict
        finally:
            if reader is not None:
                reader.close()

    def tail(self, idle_timeout_s: float | None = None) -> Iterator[Verdict]:
        """Every verdict in the results topic from the beginning, then new ones as they come.

        Stops after `idle_timeout_s` without a new verdict (None: follows forever).
        """
        reader = self._results_reader()
        last = time.monotonic()
        try:
            while idle_timeout_s is None or time.monotonic() - last < idle_timeout_s:
                for verdict in self._poll_results(reader, 500):
                    last = time.monotonic()
                    yield verdict
        finally:
            reader.close()

    def _results_reader(self) -> KafkaConsumer:
        # No consumer group: a reader must not steal partitions from other readers, and
        # assigning every partition from the beginning is plain Kafka on every broker.
        reader = KafkaConsumer(**common_config(self.settings), enable_auto_commit=False, auto_offset_reset="earliest")
        partitions = reader.partitions_for_topic(self.settings.results_topic) or set()
        deadline = time.monotonic() + 10
        while not partitions and time.monotonic() < deadline:
            time.sleep(0.2)
            partitions = reader.partitions_for_topic(self.settings.results_topic) or set()
        tps = [TopicPartition(self.settings.results_topic, p) for p in sorted(partitions)]
        reader.assign(tps)
        reader.seek_to_beginning(*tps)
        return reader

    @staticmethod
    def _poll_results(reader: KafkaConsumer, timeout_ms: int) -> Iterator[Verdict]:
        for records in reader.poll(timeout_ms=timeout_ms).values():
            for record in records:
                try:
                    yield decode_verdict(record.value)
                except (ValueError, TypeError, KeyError):
                    continue  # not a verdict of a schema we know

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=5)
        self._redis.close()

    def __enter__(self) -> "ScanClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
