"""The hostile-message corpus against one real `dfd-worker run` process, the broker and Redis.

Each hostile message is followed by a valid request on a 1-partition topic. Afterwards the
same worker process is alive, /healthz says 200, every valid request has its verdict, every
hostile message is either in the dead-letter topic with its code and reason or answered with
an `error` verdict (paths the parser cannot judge), and the group's committed offset has
reached the end of the partition. docs/streaming.md ("Hostile messages") lists the outcomes.
"""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
from kafka import KafkaProducer

from tests.fixtures.stack import committed_offsets, read_topic, start_worker, wait_for_log
from worker.localstack import free_port
from worker.service.dead_letter import HEADER_CODE, HEADER_OFFSET, HEADER_REASON

pytestmark = [pytest.mark.broker, pytest.mark.slow]

MAX_MESSAGE_BYTES = 64 * 1024


def _request(**fields) -> bytes:
    doc = {"schema_version": 1, "request_id": "r-1", "uri": "/videos/v.mp4"}
    doc.update(fields)
    return json.dumps(doc).encode()


def _raw(fields: str) -> bytes:
    """A request written by hand, for what json.dumps would never write."""
    return ('{"schema_version": 1, ' + fields + "}").encode()


# name -> (message value, the dead-letter code it must get)
DEAD_LETTERED: dict[str, tuple[bytes | None, str]] = {
    "deep_array": (b"[" * 5000, "malformed"),  # RecursionError in json.loads before issue 8
    "deep_object": (b'{"a":' * 3000 + b"1" + b"}" * 3000, "malformed"),
    "deep_metadata": (_raw('"request_id": "d", "uri": "u", "metadata": ' + "[" * 40 + "]" * 40), "malformed"),
    "huge_int": (_raw('"request_id": "h", "uri": "u", "metadata": {"n": ' + "9" * 5000 + "}"), "invalid"),  # ValueError
    "int_over_64_bits": (_raw('"request_id": "h", "uri": "u", "metadata": {"n": 18446744073709551616}'), "invalid"),
    "float_overflow": (_raw('"request_id": "f", "uri": "u", "metadata": {"x": 1e999}'), "invalid"),
    "nan": (_raw('"request_id": "n", "uri": "u", "metadata": {"x": NaN}'), "invalid"),
    "lone_surrogate_request_id": (_raw('"request_id": "\\ud800", "uri": "u"'), "invalid"),  # stuck the partition
    "lone_surrogate_uri": (_raw('"request_id": "s", "uri": "/videos/\\udfff.mp4"'), "invalid"),
    "lone_surrogate_metadata_key": (_raw('"request_id": "s", "uri": "u", "metadata": {"\\udbff": 1}'), "invalid"),
    "invalid_utf8": (b'{"schema_version": 1, "request_id": "\xff\xfe", "uri": "u"}', "malformed"),
    "null_value": (None, "malformed"),
    "empty_value": (b"", "malformed"),
    "truncated_json": (_request()[:-5], "malformed"),
    "not_an_object": (b"[1, 2, 3]", "malformed"),
    "duplicate_keys": (_raw('"request_id": "a", "uri": "u", "request_id": "b"'), "malformed"),
    "oversized": (_request(metadata={"pad": "x" * (MAX_MESSAGE_BYTES + 10)}), "oversized"),
    "metadata_too_large": (_request(metadata={"pad": "x" * 20_000}), "invalid"),
    "unknown_version": (_request(schema_version=2), "unknown_version"),
    "missing_version": (b'{"request_id": "a", "uri": "u"}', "unknown_version"),
    "version_as_string": (_request(schema_version="1"), "unknown_version"),
    "request_id_not_a_string": (_request(request_id=12345), "invalid"),
    "request_id_path_traversal": (_request(request_id="../../etc/passwd"), "invalid"),
    "request_id_too_long": (_request(request_id="x" * 129), "invalid"),
    "request_id_with_newline": (_request(request_id="a\nb"), "invalid"),
    "uri_wrong_type": (_request(uri=["a", "b"]), "invalid"),
    "sha256_wrong": (_request(sha256="not-a-hash"), "invalid"),
    "metadata_not_an_object": (_request(metadata="x"), "invalid"),
}


@pytest.fixture
def settings(stack, untrained_bundle, carphone):
    return stack.settings(
        partitions=1,
        model_dir=str(untrained_bundle.path),
        allowed_roots=(str(carphone.parent),),
        http_port=free_port(),
        max_message_bytes=MAX_MESSAGE_BYTES,
        kafka_sasl_password="never-in-a-log-line",  # unused on PLAINTEXT; must not show up either
    )


@pytest.fixture
def worker(settings, tmp_path):
    proc = start_worker(settings, tmp_path / "worker.log")
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _healthz(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
        return resp.status


def test_hostile_messages_never_stop_the_worker(settings, worker, carphone, tmp_path):
    # answered with an error verdict: the parser accepts them, fetching refuses them
    refused = {
        "nul_in_path": _request(request_id="nul", uri=f"{carphone.parent}/carphone\x00.mp4"),
        "nul_in_file_uri": _request(request_id="nul-uri", uri=f"file://{carphone.parent}/x%00.mp4"),
        "escape_in_path": _request(request_id="esc", uri=f"{carphone.parent}/\x1b[2J.mp4"),
    }
    cases = [(name, value) for name, (value, _code) in DEAD_LETTERED.items()] + list(refused.items())
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, max_request_size=1 << 20)
    offsets: dict[int, str] = {}  # offset of each hostile message -> its case
    valid_ids = []
    for i, (name, value) in enumerate(cases):
        offsets[2 * i] = name
        producer.send(settings.requests_topic, key=name.encode(), value=value)
        rid = f"ok-{i}"
        valid_ids.append(rid)
        producer.send(settings.requests_topic, key=rid.encode(), value=_request(request_id=rid, uri=str(carphone)))
    producer.flush()
    producer.close()
    total = 2 * len(cases)

    log = tmp_path / "worker.log"
    pid = worker.pid
    wait_for_log(log, '"event": "partitions_assigned"', timeout_s=60, proc=worker)
    answers = read_topic(settings.kafka_bootstrap, settings.results_topic, count=len(valid_ids) + len(refused), timeout_s=90)
    letters = read_topic(settings.kafka_bootstrap, settings.dead_letter_topic, count=len(DEAD_LETTERED), timeout_s=30)

    # the same process, alive and healthy
    assert worker.poll() is None and worker.pid == pid, log.read_text()[-3000:]
    assert _healthz(settings.http_port) == 200

    # every valid request was answered with a real verdict
    verdicts = {r.key.decode(): r.json() for r in answers}
    for rid in valid_ids:
        assert rid in verdicts, f"no verdict for {rid}"
        assert verdicts[rid]["label"] in ("real", "fake"), verdicts[rid]
    # paths with control characters are a refusal, never an internal error
    for name, value in refused.items():
        rid = json.loads(value)["request_id"]
        assert verdicts[rid]["label"] == "error" and verdicts[rid]["error_code"] == "source_refused", (name, verdicts[rid])

    # every hostile message is in the dead-letter topic, byte for byte, with its code and a reason
    by_case = {offsets[int(r.headers[HEADER_OFFSET])]: r for r in letters}
    assert set(by_case) == set(DEAD_LETTERED), sorted(set(DEAD_LETTERED) ^ set(by_case))
    for name, (value, code) in DEAD_LETTERED.items():
        letter = by_case[name]
        assert letter.headers[HEADER_CODE].decode() == code, (name, letter.headers)
        assert letter.headers[HEADER_REASON], name
        assert letter.key == name.encode() and letter.value == (value or b"")

    # the committed offset reaches the end of the partition: nothing is stuck
    deadline = time.monotonic() + 20
    while committed_offsets(settings, 1)[0] != total and time.monotonic() < deadline:
        time.sleep(0.5)
    assert committed_offsets(settings, 1) == {0: total}
    assert worker.poll() is None and _healthz(settings.http_port) == 200

    text = log.read_text()
    assert "Traceback" not in text and "internal_error" not in text
    assert "never-in-a-log-line" not in text
