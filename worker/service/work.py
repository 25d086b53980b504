"""`Work`: one consumed message on its way through the steps of the worker (see runner.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Hashable

from worker.service.messages import Rejected
from worker.types import ScanRequest, Verdict


@dataclass(eq=False)
class Work:
    tp: Hashable  # kafka TopicPartition (anything hashable with .topic/.partition in tests)
    offset: int
    key: bytes | None
    value: bytes | None  # the original bytes, for dead letters (at most settings.max_message_bytes)
    received: float = field(default_factory=time.monotonic)
    request: ScanRequest | None = None
    verdict: Verdict | None = None  # the answer, once there is one
    dead_letter: Rejected | None = None  # or why it goes to the dead-letter topic
    attempts: int = 0  # handling attempts started in this process (the Redis count spans restarts)
    publishes: int = 0  # tries to publish the answer

    @property
    def where(self) -> str:
        return f"{getattr(self.tp, 'topic', self.tp)}:{getattr(self.tp, 'partition', 0)}:{self.offset}"
