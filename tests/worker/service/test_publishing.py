"""The publish step without a broker: acknowledged answers are done; failures are sorted by kind."""

import time

import pytest
from kafka.errors import (
    BrokerNotAvailableError,
    InvalidTopicError,
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    TopicAuthorizationFailedError,
    UnknownError,
)

from tests.worker.service.steps import MODEL, TP, LocalProducer, verdict
from worker.service import publishing
from worker.service.dead_letter import HEADER_CODE, HEADER_REASON
from worker.service.health import HealthState
from worker.service.messages import Rejected
from worker.service.publishing import Publisher, permanent
from worker.service.work import Work


@pytest.mark.parametrize("exc", [
    MessageSizeTooLargeError("too big"), InvalidTopicError("bad name"), UnknownError("?"),
    UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), TypeError("not bytes"),
])
def test_failures_no_retry_can_fix_are_permanent(exc):
    assert permanent(exc)


@pytest.mark.parametrize("exc", [
    KafkaTimeoutError("buffer full"), KafkaConnectionError("down"), NotLeaderForPartitionError(),
    BrokerNotAvailableError(), TopicAuthorizationFailedError(),  # the worker's setup, not the message
])
def test_outages_and_setup_problems_are_retried(exc):
    assert not permanent(exc)


def _publisher(producer, done, published=None, health=None):
    return Publisher(
        producer, results_topic="res", dead_letter_topic="dlq", model_info=MODEL, backoff_s=0.01,
        on_published=(published if published is not None else []).append, on_done=done.append, health=health,
    ).start()


def _wait(cond, timeout_s=5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not cond():
        time.sleep(0.01)
    assert cond()


def _work(offset=0, value=b'{"request": 1}'):
    return Work(TP("req", 0), offset, b"key", value)


def test_acknowledged_verdict_is_done_and_handed_to_redis():
    producer, done, published = LocalProducer(), [], []
    pub = _publisher(producer, done, published)
    w = _work()
    pub.publish(w, verdict())
    _wait(lambda: done == [w])
    pub.close()
    assert published == [w] and producer.topics() == ["res"]


def test_verdict_too_large_is_dead_lettered_with_the_reason_and_done():
    def failures(topic, key, value):
        return MessageSizeTooLargeError("The message is 2000000 bytes") if topic == "res" else None

    producer, done = LocalProducer(failures), []
    pub = _publisher(producer, done)
    w = _work()
    pub.publish(w, verdict())
    _wait(lambda: done == [w])
    pub.close()
    [(topic, key, value, headers)] = producer.sent
    assert (topic, key, value) == ("dlq", b"key", b'{"request": 1}')  # the original request, unchanged
    assert headers[HEADER_CODE] == b"unpublishable"
    assert b"MessageSizeTooLargeError" in headers[HEADER_REASON]


def test_non_encodable_key_is_dead_lettered():
    producer, done = LocalProducer(), []
    pub = _publisher(producer, done)
    w = _work()
    pub.publish(w, verdict(request_id="\ud800"))  # encoding the key raises in send
    _wait(lambda: done == [w])
    pub.close()
    assert producer.topics() == ["dlq"] and producer.sent[0][3][HEADER_CODE] == b"unpublishable"


def test_dead_letter_too_large_goes_without_its_value():
    producer, done = LocalProducer(lambda t, k, v: MessageSizeTooLargeError("big") if v else None), []
    pub = _publisher(producer, done)
    w = _work(value=b"x" * 100)
    pub.dead_letter(w, Rejected("invalid", "bad"))
    _wait(lambda: done == [w])
    pub.close()
    assert [(t, v) for t, _, v, _ in producer.sent] == [("dlq", b"")]


def test_retriable_failure_is_published_again_never_dropped():
    fails = {"n": 3}

    def failures(topic, key, value):
        if fails["n"]:
            fails["n"] -= 1
            return KafkaTimeoutError("broker away")
        return None

    producer, done = LocalProducer(failures), []
    pub = _publisher(producer, done)
    w = _work()
    pub.publish(w, verdict())
    _wait(lambda: done == [w])
    pub.close()
    assert producer.topics() == ["res"] and w.publishes == 4


def test_long_outage_makes_the_worker_unready_not_skip(monkeypatch):
    monkeypatch.setattr(publishing, "UNREADY_AFTER_S", 0.3)
    down = {"on": True}
    producer, done = LocalProducer(lambda t, k, v: KafkaConnectionError("down") if down["on"] else None), []
    health = HealthState()
    pub = _publisher(producer, done, health=health)
    w = _work()
    pub.publish(w, verdict())
    _wait(lambda: not health.publishing)
    assert done == [] and producer.sent == []  # nothing skipped, nothing dead-lettered
    down["on"] = False
    _wait(lambda: done == [w], timeout_s=15)
    _wait(lambda: health.publishing)
    pub.close()
    assert producer.topics() == ["res"]
