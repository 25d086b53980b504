"""The worker against a real broker and Redis, in-process: verdicts, cache, dead letters, draining."""

from __future__ import annotations

import json
import threading
import time

import pytest
from prometheus_client import REGISTRY

from producer.client import ScanClient
from tests.fixtures.stack import committed_offsets, read_topic
from worker.pipeline.scanner import Scanner
from worker.service.cache import VerdictCache, content_key, request_key
from worker.service.dead_letter import HEADER_CODE, HEADER_OFFSET, HEADER_REASON
from worker.service.messages import HEADER_MODEL_VERSION, HEADER_SCHEMA_VERSION, decode_verdict
from worker.service.runner import Runner
from worker.settings import Settings
from worker.types import ScanRequest

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def scanner(untrained_bundle, carphone, no_face_clip):
    # the scanner's own settings decide which folders may be read
    return Scanner(
        Settings(model_dir=str(untrained_bundle.path), frames_per_video=4,
                 allowed_roots=(str(carphone.parent), str(no_face_clip.parent)))
    )


@pytest.fixture
def settings(stack, untrained_bundle, carphone, no_face_clip):
    return stack.settings(
        model_dir=str(untrained_bundle.path),
        allowed_roots=(str(carphone.parent), str(no_face_clip.parent)),
    )


class RunningWorker:
    def __init__(self, settings, scanner):
        self.runner = Runner(settings, scanner)
        self.thread = threading.Thread(target=self.runner.run, daemon=True)
        self.thread.start()

    def stop(self, timeout=30):
        self.runner.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "worker did not stop"


@pytest.fixture
def start(scanner):
    workers = []

    def _start(settings):
        w = RunningWorker(settings, scanner)
        workers.append(w)
        return w

    yield _start
    for w in workers:
        if w.thread.is_alive():
            w.stop()


def test_n_requests_give_exactly_n_verdicts_in_topic_and_redis(settings, start, carphone, no_face_clip, tmp_path):
    client = ScanClient(settings)
    uris = [str(carphone)] * 3 + [no_face_clip.as_uri()] * 2 + [str(carphone.parent / "nope.mp4"), "ftp://example.com/v.mp4"]
    requests = [ScanRequest(f"req-{i}", uri, metadata={"n": i}) for i, uri in enumerate(uris)]
    ids = client.submit(requests)
    assert ids == [r.request_id for r in requests]
    worker = start(settings)

    got = {v.request_id: v for v in client.wait(ids, timeout_s=120)}
    assert set(got) == set(ids)
    records = read_topic(settings.kafka_bootstrap, settings.results_topic, count=len(ids), timeout_s=30)
    worker.stop()
    # exactly one verdict per request, keyed by request id, with the version headers
    assert sorted(r.key.decode() for r in records) == sorted(ids)
    assert len(read_topic(settings.kafka_bootstrap, settings.results_topic, idle_s=1.0)) == len(ids)
    for r in records:
        v = decode_verdict(r.value)
        assert r.key.decode() == v.request_id
        assert r.headers[HEADER_SCHEMA_VERSION] == b"1"
        assert r.headers[HEADER_MODEL_VERSION] == v.model.version.encode()
        assert v.metadata == {"n": int(v.request_id.split("-")[1])}
    for i in range(3):
        assert got[f"req-{i}"].label in ("real", "fake"), got[f"req-{i}"]
        assert got[f"req-{i}"].frames_sampled == 4
    assert got["req-3"].label == got["req-4"].label == "no_face"
    assert got["req-5"].label == "error" and got["req-6"].label == "error"
    assert got["req-6"].reason
    # Redis holds each verdict by request id
    cache = VerdictCache.from_settings(settings)
    for rid in ids:
        assert cache.get(rid).label == got[rid].label
    # every offset is committed once the work is done
    assert sum(o for o in committed_offsets(settings, 4).values() if o) == len(ids)


def test_repeated_video_is_answered_from_cache(settings, start, carphone):
    client = ScanClient(settings)
    worker = start(settings)
    hits = REGISTRY.get_sample_value("dfd_cache_hits_total") or 0.0
    [first] = list(client.wait(client.submit([str(carphone)]), timeout_s=60))
    assert first.label in ("real", "fake") and not first.cached
    assert first.content_sha256
    [again] = list(client.wait(client.submit([str(carphone)]), timeout_s=60))
    worker.stop()
    assert again.cached
    assert again.request_id != first.request_id
    assert again.score == first.score and again.content_sha256 == first.content_sha256
    assert REGISTRY.get_sample_value("dfd_cache_hits_total") == hits + 1  # found by hash, not decoded again
    assert client.get_by_hash(first.content_sha256).score == first.score
    key = content_key(settings.redis_key_prefix, first.content_sha256, first.model.sha256)
    assert client.cache.client.ttl(key) > 0
    assert client.cache.client.ttl(request_key(settings.redis_key_prefix, again.request_id)) > 0


def test_bad_messages_go_to_dead_letter_with_reason_and_original_bytes(settings, start, carphone):
    client = ScanClient(settings)
    oversized = json.dumps({"schema_version": 1, "request_id": "big", "uri": "x", "metadata": {"pad": "y" * (settings.max_message_bytes + 10)}}).encode()
    bad = {
        b"{this is not json": "malformed",
        oversized: "oversized",
        json.dumps({"schema_version": 99, "request_id": "v99", "uri": str(carphone)}).encode(): "unknown_version",
    }
    for value in bad:
        client.submit_raw(value, key=b"k")
    [good] = client.submit([str(carphone)])
    worker = start(settings)
    assert [v.request_id for v in client.wait([good], timeout_s=60)] == [good]
    letters = read_topic(settings.kafka_bootstrap, settings.dead_letter_topic, count=3, timeout_s=30)
    worker.stop()
    assert len(letters) == 3
    by_value = {r.value: r for r in letters}
    assert set(by_value) == set(bad)  # original bytes, unchanged
    for value, code in bad.items():
        r = by_value[value]
        assert r.headers[HEADER_CODE].decode() == code
        assert r.headers[HEADER_REASON]
        assert r.key == b"k"
        assert int(r.headers[HEADER_OFFSET]) >= 0
    # the bad messages are committed past, so they are not retried forever
    assert sum(o for o in committed_offsets(settings, 4).values() if o) == 4


def test_verdict_too_large_for_the_broker_is_dead_lettered_and_its_offset_commits(settings, scanner, carphone):
    from worker.service.kafka_clients import make_producer

    settings = settings.replace(max_message_bytes=16 * 1024)
    client = ScanClient(settings)
    pad = "y" * 4000  # copied into the verdict, which then outgrows the producer's limit below
    [big] = client.submit([ScanRequest("big", str(carphone.parent / "nope.mp4"), metadata={"pad": pad})])
    [good] = client.submit([ScanRequest("good", str(carphone.parent / "nope.mp4"))])
    runner = Runner(settings, scanner, producer=make_producer(settings, max_request_size=4000))
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        letters = read_topic(settings.kafka_bootstrap, settings.dead_letter_topic, count=1, timeout_s=60)
        answers = read_topic(settings.kafka_bootstrap, settings.results_topic, count=1, timeout_s=30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and sum(o or 0 for o in committed_offsets(settings, 4).values()) < 2:
            time.sleep(0.3)
    finally:
        runner.stop()
        thread.join(30)
    [letter] = letters
    assert letter.headers[HEADER_CODE] == b"unpublishable"
    assert b"MessageSizeTooLargeError" in letter.headers[HEADER_REASON]
    assert letter.key == big.encode()
    # the original request, or nothing when it is itself too large for a dead letter
    assert letter.value == b"" or json.loads(letter.value)["request_id"] == "big"
    assert [r.key.decode() for r in answers] == [good]  # the rest goes on
    assert sum(o for o in committed_offsets(settings, 4).values() if o) == 2  # committed past it
