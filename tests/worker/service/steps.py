"""Local twins of the broker-facing objects, for driving the worker's steps without a broker."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from worker.types import ModelInfo, ScanRequest, Verdict

MODEL = ModelInfo(name="m", version="1", sha256="ab" * 32, trained=True, demo=False)


@dataclass(frozen=True)
class TP:
    topic: str
    partition: int


class LocalFuture:
    """Resolved at once, like kafka-python's future of a failed send: callbacks run when added."""

    def __init__(self, exc=None):
        self.exc = exc

    def add_callback(self, fn):
        if self.exc is None:
            fn("metadata")

    def add_errback(self, fn):
        if self.exc is not None:
            fn(self.exc)


class LocalProducer:
    """Acknowledges at once, or fails each send with what `failures(topic, key, value)` returns."""

    def __init__(self, failures=lambda topic, key, value: None):
        self.failures = failures
        self.sent: list[tuple[str, bytes | None, bytes | None, dict]] = []
        self.lock = threading.Lock()

    def send(self, topic, key=None, value=None, headers=None):
        exc = self.failures(topic, key, value)
        if isinstance(exc, BaseException) and getattr(exc, "at_send", False):
            raise exc
        if exc is None:
            with self.lock:
                self.sent.append((topic, key, value, dict(headers or [])))
        return LocalFuture(exc)

    def topics(self):
        return [t for t, *_ in self.sent]


def verdict(request_id="r1", uri="/v.mp4", label="real", error_code=None, model=MODEL, **extra) -> Verdict:
    return Verdict(request_id=request_id, uri=uri, label=label, error_code=error_code, model=model,
                   reason="why" if error_code else None, **extra)


def request(request_id="r1", uri="/v.mp4") -> ScanRequest:
    return ScanRequest(request_id, uri)
