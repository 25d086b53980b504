"""Which offsets may be committed: per partition, the highest offset below which all work is done.

Work finishes out of order (a short clip overtakes a long one), but a Kafka commit says
"everything before this offset is handled". The tracker therefore commits only up to the
oldest offset still in flight, so a crash never skips unfinished work (at-least-once).
It also counts what is not yet committed, done or not (`uncommitted`): that is what a
crash would redo, so the runner's window is measured in it.
Pure logic, no Kafka calls: the commit path (`commits.py`) feeds it and performs the commits.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Hashable


@dataclass
class _PartitionState:
    pending: set[int] = field(default_factory=set)
    next_offset: int | None = None  # one past the highest offset seen
    committed: int | None = None  # the last offset handed out for commit
    received: deque[int] = field(default_factory=deque)  # offsets received, not yet below a commit


class OffsetTracker:
    """Per-partition bookkeeping of offsets received, finished and committed."""

    def __init__(self) -> None:
        self._parts: dict[Hashable, _PartitionState] = {}

    def add(self, partition: Hashable, offset: int) -> None:
        """Record a message received; offsets of one partition must arrive in increasing order."""
        state = self._parts.setdefault(partition, _PartitionState())
        if state.next_offset is not None and offset < state.next_offset:
            raise ValueError(f"offset {offset} of {partition} arrived after {state.next_offset - 1}")
        state.pending.add(offset)
        state.received.append(offset)
        state.next_offset = offset + 1

    def done(self, partition: Hashable, offset: int) -> bool:
        """Mark work finished. Returns False (and ignores it) for a partition or offset not tracked,
        e.g. work that finished after its partition was revoked."""
        state = self._parts.get(partition)
        if state is None or offset not in state.pending:
            return False
        state.pending.discard(offset)
        return True

    def committable(self, partition: Hashable) -> int | None:
        """The offset to commit (the next one to consume), or None when nothing is new to commit."""
        state = self._parts.get(partition)
        if state is None or state.next_offset is None:
            return None
        target = min(state.pending) if state.pending else state.next_offset
        if state.committed is not None and target <= state.committed:
            return None
        return target

    def to_commit(self) -> dict[Hashable, int]:
        """Every partition with progress to commit, and the offset for each."""
        out = {}
        for partition in self._parts:
            offset = self.committable(partition)
            if offset is not None:
                out[partition] = offset
        return out

    def committed(self, partition: Hashable, offset: int) -> None:
        """Record a successful commit, so the same offset is not committed again."""
        state = self._parts.get(partition)
        if state is not None:
            state.committed = offset if state.committed is None else max(state.committed, offset)
            while state.received and state.received[0] < state.committed:
                state.received.popleft()

    def forget(self, partition: Hashable) -> int:
        """Drop a partition (revoked); returns how many offsets were still pending."""
        state = self._parts.pop(partition, None)
        return len(state.pending) if state else 0

    def pending(self, partition: Hashable | None = None) -> int:
        """Offsets received but not finished, in one partition or in all."""
        if partition is not None:
            state = self._parts.get(partition)
            return len(state.pending) if state else 0
        return sum(len(s.pending) for s in self._parts.values())

    def uncommitted(self, partition: Hashable | None = None) -> int:
        """Offsets received and not yet covered by a commit, finished or not: what a crash now
        would hand to the next owner to redo."""
        if partition is not None:
            state = self._parts.get(partition)
            return len(state.received) if state else 0
        return sum(len(s.received) for s in self._parts.values())

    def partitions(self) -> list[Hashable]:
        return list(self._parts)
