"""POST /v1/scans: validated by the worker's own parse_request, published to the requests topic, long-poll."""

from __future__ import annotations

import json
import threading
import time

from tests.api.conftest import make_verdict
from tests.fixtures.stack import read_topic
from worker.service.cache import VerdictCache
from worker.service.messages import parse_request
from worker.types import ScanRequest


def test_a_valid_request_is_published_as_the_worker_reads_it(api):
    body = {"schema_version": 1, "request_id": "s-1", "uri": "https://cdn.example.com/a.mp4",
            "metadata": {"user": 7}, "callback_url": "https://hooks.example.com/dfd"}
    with api.client() as http:
        accepted = http.post("/v1/scans", json=body)
        generated = http.post("/v1/scans", json={"schema_version": 1, "uri": "/videos/b.mp4"})
    assert accepted.status_code == 202
    assert accepted.json() == {"request_id": "s-1", "status_url": "/v1/verdicts/s-1"}
    new_id = generated.json()["request_id"]
    assert generated.status_code == 202 and len(new_id) == 32
    records = read_topic(api.settings.kafka_bootstrap, api.settings.requests_topic, count=2, timeout_s=20)
    parsed = {r.key.decode(): parse_request(r.value, api.settings.max_message_bytes) for r in records}
    assert parsed == {
        "s-1": ScanRequest("s-1", "https://cdn.example.com/a.mp4", None, {"user": 7}, "https://hooks.example.com/dfd"),
        new_id: ScanRequest(new_id, "/videos/b.mp4"),
    }


def test_invalid_requests_get_parse_requests_code_and_reason(api):
    cases = {
        "unknown_version": {"schema_version": 2, "uri": "a.mp4"},
        "invalid": {"schema_version": 1, "uri": ""},
        "malformed": [1, 2],
    }
    with api.client() as http:
        for code, body in cases.items():
            r = http.post("/v1/scans", json=body)
            assert (r.status_code, r.json()["code"]) == (422, code), body
        bad_callback = http.post("/v1/scans", json={"schema_version": 1, "uri": "a.mp4", "callback_url": "ftp://x/y"})
        not_json = http.post("/v1/scans", content=b"\xff\xfe", headers={"Content-Type": "application/json"})
        surrogate = http.post("/v1/scans", content=b'{"schema_version": 1, "request_id": "a\\ud800", "uri": "a.mp4"}',
                              headers={"Content-Type": "application/json"})
    assert surrogate.status_code == 422 and surrogate.json()["code"] == "invalid"
    assert bad_callback.status_code == 422 and "callback_url" in bad_callback.json()["detail"]
    assert not_json.status_code == 422 and not_json.json()["code"] == "malformed"
    assert read_topic(api.settings.kafka_bootstrap, api.settings.requests_topic, timeout_s=3, idle_s=1.5) == []


def test_wait_returns_the_verdict_when_it_comes_in_time(api):
    cache = VerdictCache.from_settings(api.settings)
    threading.Timer(1.0, lambda: cache.put(make_verdict("w-1"))).start()
    with api.client() as http:
        t0 = time.monotonic()
        done = http.post("/v1/scans", params={"wait": 10}, json={"schema_version": 1, "request_id": "w-1", "uri": "a.mp4"})
        waited = time.monotonic() - t0
        late = http.post("/v1/scans", params={"wait": 0.5}, json={"schema_version": 1, "request_id": "w-2", "uri": "a.mp4"})
    assert done.status_code == 200 and done.json()["request_id"] == "w-1" and waited < 10
    assert late.status_code == 202 and late.json()["request_id"] == "w-2"


def test_submitting_without_a_broker_is_503_not_a_crash(stack):
    from tests.api.conftest import serve
    from worker.localstack import free_port

    served, stop = serve(stack.settings().replace(kafka_bootstrap=f"127.0.0.1:{free_port()}"), run_indexer=False)
    try:
        with served.client() as http:
            r = http.post("/v1/scans", json={"schema_version": 1, "uri": "a.mp4"})
            ready = http.get("/readyz")
    finally:
        stop()
    assert r.status_code == 503 and "broker" in json.loads(r.text)["detail"]
    assert ready.status_code == 503 and "broker=False" in ready.text


def test_a_request_over_the_message_limit_is_413_oversized(stack):
    from tests.api.conftest import serve

    served, stop = serve(stack.settings(max_message_bytes=500, api_max_body_bytes=65536), run_indexer=False)
    try:
        with served.client() as http:
            r = http.post("/v1/scans", json={"schema_version": 1, "uri": "a.mp4", "metadata": {"pad": "x" * 1000}})
    finally:
        stop()
    assert r.status_code == 413 and r.json()["code"] == "oversized"
