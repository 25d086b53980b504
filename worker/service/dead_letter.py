"""The dead-letter topic: messages that cannot become requests, kept byte for byte with the reason.

A dead letter keeps the original key and value unchanged, so it can be inspected or
replayed; why it was rejected and where it came from travel in headers:
    dfd-dlq-code      malformed | oversized | unknown_version | invalid (the request cannot be read)
                      poison (its handling crashed, was killed or timed out settings.max_attempts times)
                      unpublishable (its verdict can never be published: too large, not encodable, ...)
    dfd-dlq-reason    human-readable cause
    dfd-dlq-topic, dfd-dlq-partition, dfd-dlq-offset   the original position
A dead letter too large for the broker is sent once more without the value (the headers say
where the original is).
"""

from __future__ import annotations

from kafka import KafkaProducer
from kafka.producer.future import FutureRecordMetadata

from worker.service import metrics
from worker.service.messages import Rejected

HEADER_CODE = "dfd-dlq-code"
HEADER_REASON = "dfd-dlq-reason"
HEADER_TOPIC = "dfd-dlq-topic"
HEADER_PARTITION = "dfd-dlq-partition"
HEADER_OFFSET = "dfd-dlq-offset"


def dead_letter_headers(rejected: Rejected, topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    return [
        (HEADER_CODE, rejected.code.encode()),
        (HEADER_REASON, rejected.reason.encode("utf-8", "replace")),
        (HEADER_TOPIC, topic.encode()),
        (HEADER_PARTITION, str(partition).encode()),
        (HEADER_OFFSET, str(offset).encode()),
    ]


def send_dead_letter(
    producer: KafkaProducer, dlq_topic: str, rejected: Rejected, *, key: bytes | None, value: bytes | None,
    topic: str, partition: int, offset: int, count: bool = True,
) -> FutureRecordMetadata:
    """Publish the original message to the dead-letter topic; the caller waits on the returned future.
    `count`: False for a retry of the same dead letter, so it is counted once."""
    if count:
        metrics.DEAD_LETTERS.labels(rejected.code).inc()
        metrics.FAILURES.labels(f"dead_letter_{rejected.code}").inc()
    return producer.send(
        dlq_topic, key=key, value=value if value is not None else b"",
        headers=dead_letter_headers(rejected, topic, partition, offset),
    )
