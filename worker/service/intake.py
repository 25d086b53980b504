"""The accept-and-parse step: register the offset, parse the body, route it.

A request goes on to the load step; a message that is not one goes to the dead-letter
topic with the parser's code and reason. Either way its offset is in the commit path's
window from this moment until a commit covers it.
"""

from __future__ import annotations

from typing import Any, Callable

from worker.service import metrics
from worker.service.commits import CommitPath
from worker.service.messages import Rejected, parse_request
from worker.service.work import Work


class Intake:
    def __init__(
        self, commits: CommitPath, *, max_message_bytes: int,
        load: Callable[[Work], None], dead_letter: Callable[[Work, Rejected], None],
    ):
        self.commits = commits
        self.max_message_bytes = max_message_bytes
        self.load = load
        self.dead_letter = dead_letter

    def submit(self, tp: Any, offset: int, key: bytes | None, value: bytes | None) -> Work:
        metrics.MESSAGES_CONSUMED.inc()
        self.commits.add(tp, offset)
        work = Work(tp, offset, key, value)
        parsed = parse_request(value, self.max_message_bytes)
        if isinstance(parsed, Rejected):
            self.dead_letter(work, parsed)
        else:
            work.request = parsed
            self.load(work)
        return work
