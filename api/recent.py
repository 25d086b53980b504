"""The review page's index of recent verdicts, and the channel that feeds the verdict stream.

Written by dfd-api's results consumer (group `<DFD_API_GROUP_ID>-index`), never by the worker:
    {prefix}:api:recent    sorted set, request id -> created_at (newest DFD_API_RECENT_MAX, within the TTL)
    {prefix}:api:verdicts  pub/sub channel, each verdict's JSON as it is indexed (SSE clients listen)
The verdicts themselves are read from the worker's cache keys (worker.service.cache).
"""

from __future__ import annotations

import json
import time
from typing import Iterable

from worker.service.cache import VerdictCache, request_key
from worker.service.messages import decode_verdict
from worker.types import Verdict


def recent_key(prefix: str) -> str:
    return f"{prefix}:api:recent"


def channel(prefix: str) -> str:
    return f"{prefix}:api:verdicts"


class RecentIndex:
    def __init__(self, cache: VerdictCache, max_entries: int):
        self.cache = cache
        self.max_entries = max_entries

    @property
    def _key(self) -> str:
        return recent_key(self.cache.prefix)

    def add(self, bodies: Iterable[bytes]) -> int:
        """Index raw verdict messages (unreadable ones are skipped) and announce them; returns how many."""
        pipe = self.cache.client.pipeline(transaction=False)
        added = 0
        for body in bodies:
            try:
                doc = json.loads(body)
                request_id, created_at = doc["request_id"], float(doc.get("created_at") or time.time())
            except (ValueError, TypeError, KeyError, AttributeError):
                continue
            if not isinstance(request_id, str):
                continue
            pipe.zadd(self._key, {request_id: created_at})
            pipe.publish(channel(self.cache.prefix), body)
            added += 1
        if added:
            pipe.zremrangebyrank(self._key, 0, -(self.max_entries + 1))
            pipe.zremrangebyscore(self._key, "-inf", time.time() - self.cache.ttl_s)
            pipe.expire(self._key, self.cache.ttl_s)
            pipe.execute()
        return added

    def recent(self, since: float, scan_max: int) -> list[Verdict]:
        """Verdicts indexed with created_at >= since, newest first, at most `scan_max` looked at.

        An index entry whose verdict has expired from the cache (or was never written) is skipped.
        """
        ids = self.cache.client.zrevrangebyscore(self._key, "+inf", since, start=0, num=scan_max)
        verdicts = []
        for start in range(0, len(ids), 200):
            chunk = ids[start : start + 200]
            keys = [request_key(self.cache.prefix, rid.decode("utf-8", "replace")) for rid in chunk]
            for body in self.cache.client.mget(keys):
                if body is None:
                    continue
                try:
                    verdicts.append(decode_verdict(body))
                except (ValueError, TypeError, KeyError):
                    continue
        return verdicts
