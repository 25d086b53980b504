"""Rebalance handling: drain revoked partitions, commit their progress, let them go.

kafka-python 3 calls these hooks as coroutines on its network thread, where a blocking call
is refused and a blocking wait would stop heartbeats; the revoke drain therefore waits with
`client_loop.loop_sleep` and commits through the commit path's awaited `commit_async`.
Partitions *lost* (this member was evicted) are dropped without committing: they already
belong to someone else, who redoes the unfinished work. `drain` is the same for shutdown,
from the main thread.
"""

from __future__ import annotations

import time

import structlog
from kafka import AsyncConsumerRebalanceListener

from worker.service import metrics
from worker.service.client_loop import loop_sleep
from worker.service.commits import CommitPath

log = structlog.get_logger(__name__)


class RebalanceHandler(AsyncConsumerRebalanceListener):
    def __init__(self, commits: CommitPath, grace_s: float, health=None):
        self.commits = commits
        self.grace_s = grace_s
        self.health = health

    async def on_partitions_revoked(self, revoked):
        metrics.REBALANCES.labels("revoked").inc()
        # cooperative assignor: only the partitions that move, and already out of the assignment
        log.info("partitions_revoked", partitions=sorted(tp.partition for tp in revoked), owned=self._owned())
        known = self.commits.partitions()
        partitions = [tp for tp in revoked if tp in known]
        if partitions:
            deadline = time.monotonic() + self.grace_s
            log.info("draining", reason="rebalance", in_flight=self.commits.pending(partitions), grace_s=self.grace_s)
            while self.commits.pending(partitions) and time.monotonic() < deadline:
                await loop_sleep(0.02)
            await self.commits.commit_async(partitions)
            _forget(self.commits, partitions, "rebalance")
        _drop_lag(revoked)

    async def on_partitions_assigned(self, assigned):
        metrics.REBALANCES.labels("assigned").inc()
        # with the cooperative assignor `assigned` holds only the partitions added: log the whole set too
        log.info("partitions_assigned", partitions=sorted(tp.partition for tp in assigned), owned=self._owned())
        if self.health is not None:
            self.health.tick(broker_reachable=True)

    def _owned(self) -> list[int]:
        return sorted(tp.partition for tp in self.commits.consumer.assignment())

    async def on_partitions_lost(self, lost):
        metrics.REBALANCES.labels("lost").inc()
        dropped = self.commits.forget(list(lost))
        log.warning("partitions_lost", partitions=sorted(tp.partition for tp in lost), abandoned=dropped)
        _drop_lag(lost)


def drain(commits: CommitPath, partitions: list, grace_s: float, reason: str) -> None:
    """Shutdown: wait for in-flight work within the grace period, commit, forget."""
    if not partitions:
        return
    deadline = time.monotonic() + grace_s
    log.info("draining", reason=reason, in_flight=commits.pending(partitions), grace_s=grace_s)
    while commits.pending(partitions) and time.monotonic() < deadline:
        time.sleep(0.02)
    commits.commit(partitions)
    _forget(commits, partitions, reason)


def _forget(commits: CommitPath, partitions: list, reason: str) -> None:
    left = commits.forget(partitions)
    if left:
        log.warning("drain_incomplete", reason=reason, abandoned=left)
    log.info("drained", reason=reason, abandoned=left)


def _drop_lag(partitions) -> None:
    for tp in partitions:
        try:
            metrics.CONSUMER_LAG.remove(f"{tp.topic}:{tp.partition}")
        except KeyError:  # no lag reported for it yet
            pass
