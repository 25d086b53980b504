"""Handling attempts per message, counted in Redis so they survive a crash of the worker.

A message whose handling kills the worker (or its decoder) comes back after every restart,
on every replica that takes the partition over: a crash loop. Each handling attempt is
counted when it starts, under `{prefix}:attempts:{topic}:{partition}:{offset}` (expiring
after the verdict TTL); a start that finds the count above settings.max_attempts means that
many attempts began and none finished, and the message is dead-lettered with code `poison`.
Redis being down never blocks work: the attempt is then counted in this process only, and
after a failure Redis is skipped for OUTAGE_BACKOFF_S (as the verdict cache does), so a
hanging Redis does not add a socket timeout to every request.
"""

from __future__ import annotations


import redis
import structlog

from worker.service import metrics
from worker.service.cache import OutageBackoff

log = structlog.get_logger(__name__)


def attempts_key(prefix: str, topic: str, partition: int, offset: int) -> str:
    return f"{prefix}:attempts:{topic}:{partition}:{offset}"


class AttemptCounter:
    def __init__(self, client: redis.Redis, prefix: str, ttl_s: int):
        self.client = client
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._backoff = OutageBackoff()

    def start(self, topic: str, partition: int, offset: int) -> int | None:
        """Count one more attempt and return the total so far, or None when Redis cannot say."""
        key = attempts_key(self.prefix, topic, partition, offset)
        if self._backoff.active():
            metrics.FAILURES.labels("attempts_unavailable").inc()
            return None
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.incr(key)
            pipe.expire(key, self.ttl_s)
            count, _ = pipe.execute()
            return int(count)
        except redis.RedisError as exc:
            self._backoff.failed()
            metrics.FAILURES.labels("attempts_unavailable").inc()
            log.warning("attempt_count_failed", key=key, error=str(exc))
            return None

    def clear(self, topic: str, partition: int, offset: int) -> None:
        """Forget the count once the message is answered (best effort: the TTL covers failures)."""
        try:
            self.client.delete(attempts_key(self.prefix, topic, partition, offset))
        except redis.RedisError:
            pass
