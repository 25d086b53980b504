"""The Redis verdict cache: by request id, and by content hash plus model, with a TTL.

Key scheme (prefix from settings.redis_key_prefix, default `dfd`):
    {prefix}:verdict:req:{request_id}                         -> verdict JSON
    {prefix}:verdict:sha:{content_sha256}:{model_sha256[:16]} -> verdict JSON
    {prefix}:verdict:thumbs:{request_id}                      -> list of JPEG face crops (optional)
The second key lets a video sent again be answered without decoding it, but only by the
same model. Redis being down never stops the worker: each failure is counted and logged,
the call returns None/False, and redis-py reconnects on the next command. After a failure
calls fail fast for `OUTAGE_BACKOFF_S` (counted as failures too), so a Redis that hangs
does not slow every verdict down by a socket timeout.
"""

from __future__ import annotations

import json
import ssl
import threading
import time

import redis
import structlog

from worker.service import metrics
from worker.service.messages import decode_verdict, encode_verdict
from worker.settings import Settings
from worker.types import LABEL_ERROR, Verdict

log = structlog.get_logger(__name__)

OUTAGE_BACKOFF_S = 2.0


class OutageBackoff:
    """After a failed Redis call, skip Redis for `seconds`: a Redis that hangs or refuses then
    costs one timeout every few seconds instead of one per request. Thread-safe."""

    def __init__(self, seconds: float = OUTAGE_BACKOFF_S):
        self.seconds = seconds
        self._until = 0.0
        self._lock = threading.Lock()

    def active(self) -> bool:
        with self._lock:
            return time.monotonic() < self._until

    def failed(self) -> None:
        with self._lock:
            self._until = time.monotonic() + self.seconds


def request_key(prefix: str, request_id: str) -> str:
    return f"{prefix}:verdict:req:{request_id}"


def content_key(prefix: str, content_sha256: str, model_sha256: str) -> str:
    return f"{prefix}:verdict:sha:{content_sha256}:{model_sha256[:16]}"


def thumbnails_key(prefix: str, request_id: str) -> str:
    """A list of JPEG face crops, one per face of the verdict, in order (DFD_STORE_THUMBNAILS)."""
    return f"{prefix}:verdict:thumbs:{request_id}"


def connect(settings: Settings, client_class: type = redis.Redis, **overrides) -> redis.Redis:
    """A Redis client from settings (URL, password override, TLS CA), with short timeouts.

    `client_class` may be `redis.asyncio.Redis` (dfd-api), `overrides` change the defaults.
    """
    kwargs: dict = {"socket_connect_timeout": 2.0, "socket_timeout": 2.0, "health_check_interval": 15, **overrides}
    if settings.redis_password:
        kwargs["password"] = settings.redis_password
    if settings.redis_url.startswith("rediss://"):
        kwargs["ssl_cert_reqs"] = ssl.CERT_REQUIRED
        if settings.redis_ssl_ca:
            kwargs["ssl_ca_certs"] = settings.redis_ssl_ca
    return client_class.from_url(settings.redis_url, **kwargs)


class VerdictCache:
    """Reads and writes verdicts; thread-safe (redis-py's connection pool)."""

    def __init__(self, client: redis.Redis, prefix: str, ttl_s: int, lookup_by_content: bool = True):
        self.client = client
        # False: every video is decoded and analysed even if seen before (benchmarks)
        self.lookup_by_content = lookup_by_content
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._backoff = OutageBackoff()

    @classmethod
    def from_settings(cls, settings: Settings) -> "VerdictCache":
        return cls(connect(settings), settings.redis_key_prefix, settings.redis_ttl_s)

    def put(self, verdict: Verdict) -> bool:
        """Store a verdict under its request id and, when it is a real answer, its content hash."""
        body = encode_verdict(verdict)
        if self._in_outage():
            metrics.FAILURES.labels("cache_write").inc()
            return False
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.set(request_key(self.prefix, verdict.request_id), body, ex=self.ttl_s)
            # error verdicts are about the request (bad URI, timeout), not the content: never reuse them
            if verdict.label != LABEL_ERROR and verdict.content_sha256 and verdict.model and not verdict.cached:
                pipe.set(content_key(self.prefix, verdict.content_sha256, verdict.model.sha256), body, ex=self.ttl_s)
            if verdict.thumbnails:
                thumbs = thumbnails_key(self.prefix, verdict.request_id)
                pipe.delete(thumbs)
                pipe.rpush(thumbs, *verdict.thumbnails)
                pipe.expire(thumbs, self.ttl_s)
            pipe.execute()
            return True
        except redis.RedisError as exc:
            self._outage()
            metrics.FAILURES.labels("cache_write").inc()
            log.warning("cache_write_failed", request_id=verdict.request_id, error=str(exc))
            return False

    def get(self, request_id: str) -> Verdict | None:
        return self._read(request_key(self.prefix, request_id))

    def get_json(self, request_id: str) -> bytes | None:
        """The verdict JSON as the worker stored it (dfd-api serves it without decoding), or None."""
        if self._in_outage():
            metrics.FAILURES.labels("cache_read").inc()
            return None
        try:
            return self.client.get(request_key(self.prefix, request_id))
        except redis.RedisError as exc:
            self._outage()
            metrics.FAILURES.labels("cache_read").inc()
            log.warning("cache_read_failed", request_id=request_id, error=str(exc))
            return None

    def in_outage(self) -> bool:
        """True for OUTAGE_BACKOFF_S after a failed Redis call (a None just now may mean 'Redis away')."""
        return self._in_outage()

    def thumbnail(self, request_id: str, index: int) -> bytes | None:
        """JPEG of the verdict's face `index`, when the worker stored thumbnails (DFD_STORE_THUMBNAILS)."""
        try:
            return self.client.lindex(thumbnails_key(self.prefix, request_id), index)
        except redis.RedisError:
            metrics.FAILURES.labels("cache_read").inc()
            return None

    def thumbnail_count(self, request_id: str) -> int:
        try:
            return int(self.client.llen(thumbnails_key(self.prefix, request_id)))
        except redis.RedisError:
            metrics.FAILURES.labels("cache_read").inc()
            return 0

    def get_by_content(self, content_sha256: str, model_sha256: str) -> Verdict | None:
        if not self.lookup_by_content:
            return None
        return self._read(content_key(self.prefix, content_sha256, model_sha256))

    def _read(self, key: str) -> Verdict | None:
        if self._in_outage():
            metrics.FAILURES.labels("cache_read").inc()
            return None
        try:
            body = self.client.get(key)
        except redis.RedisError as exc:
            self._outage()
            metrics.FAILURES.labels("cache_read").inc()
            log.warning("cache_read_failed", key=key, error=str(exc))
            return None
        if body is None:
            return None
        try:
            return decode_verdict(body)
        except (ValueError, TypeError, KeyError, json.JSONDecodeError) as exc:
            # a verdict of an older schema or a foreign value: treat as a miss
            log.warning("cache_entry_unreadable", key=key, error=str(exc))
            return None

    def _in_outage(self) -> bool:
        return self._backoff.active()

    def _outage(self) -> None:
        self._backoff.failed()

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False
