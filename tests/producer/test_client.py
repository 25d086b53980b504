"""The producer library against the real broker and Redis (no worker: verdicts are planted)."""

from __future__ import annotations

import pytest

from producer.client import ScanClient
from tests.fixtures.stack import read_topic
from worker.localstack import free_port
from worker.service.cache import VerdictCache
from worker.service.kafka_clients import make_producer
from worker.service.messages import encode_verdict, parse_request
from tests.producer.conftest import MODEL, make_verdict
from worker.types import ScanRequest

pytestmark = pytest.mark.broker

def test_submit_publishes_versioned_requests_keyed_by_id(settings):
    with ScanClient(settings) as client:
        ids = client.submit(["https://example.com/a.mp4", ScanRequest("mine", "/v/b.mp4", metadata={"x": 1})])
    assert ids[1] == "mine" and len(ids[0]) == 32
    records = read_topic(settings.kafka_bootstrap, settings.requests_topic, count=2, timeout_s=20)
    parsed = {r.key.decode(): parse_request(r.value, settings.max_message_bytes) for r in records}
    assert parsed == {
        ids[0]: ScanRequest(ids[0], "https://example.com/a.mp4"),
        "mine": ScanRequest("mine", "/v/b.mp4", metadata={"x": 1}),
    }


def test_error_verdicts_are_not_cached_by_content(settings):
    cache = VerdictCache.from_settings(settings)
    cache.put(make_verdict("bad", sha="11" * 32, label="error", score=None))
    assert cache.get("bad").label == "error"
    assert cache.get_by_content("11" * 32, MODEL.sha256) is None


def test_wait_reads_redis_and_falls_back_to_the_topic_when_redis_is_down(settings):
    producer = make_producer(settings)
    for rid in ("w1", "w2"):
        producer.send(settings.results_topic, key=rid.encode(), value=encode_verdict(make_verdict(rid)))
    producer.flush()
    producer.close()
    VerdictCache.from_settings(settings).put(make_verdict("w1"))
    with ScanClient(settings) as client:
        got = list(client.wait(["w1", "w2"], timeout_s=1))
    assert [v.request_id for v in got] == ["w1"]  # w2 is only in the topic, Redis answers w1

    nowhere = settings.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with ScanClient(nowhere) as client:
        got = list(client.wait(["w1", "w2"], timeout_s=30))
    assert sorted(v.request_id for v in got) == ["w1", "w2"]
