"""The results consumer indexes verdicts and the stream sends them as server-sent events, filtered by label."""

from __future__ import annotations

import json
import time

from tests.api.conftest import make_verdict
from worker.service.kafka_clients import make_producer
from worker.service.messages import encode_verdict


def publish(settings, verdicts) -> None:
    producer = make_producer(settings)
    for v in verdicts:
        producer.send(settings.results_topic, key=v.request_id.encode(), value=encode_verdict(v))
    producer.flush()
    producer.close()


def test_stream_sends_new_verdicts_of_the_wanted_labels(api):
    events = []
    with api.client() as http, http.stream("GET", "/v1/verdicts/stream", params={"label": ["fake", "error"]}) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        publish(api.settings, [make_verdict("e-real", label="real", score=0.1), make_verdict("e-fake"),
                               make_verdict("e-err", label="error", score=None)])
        deadline = time.monotonic() + 40
        lines = stream.iter_lines()
        while len(events) < 2 and time.monotonic() < deadline:
            line = next(lines)
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: "):]))
    assert sorted(e["request_id"] for e in events) == ["e-err", "e-fake"]  # the real one was filtered out


def test_unknown_label_filter_is_422(api):
    with api.client() as http:
        assert http.get("/v1/verdicts/stream", params={"label": "weird"}).status_code == 422
