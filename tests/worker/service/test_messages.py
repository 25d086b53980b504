"""Request parsing: every kind of bad message gets a reason, good ones become ScanRequests."""

import json

import pytest

from worker.service.messages import (
    HEADER_MODEL_VERSION,
    HEADER_SCHEMA_VERSION,
    Rejected,
    decode_verdict,
    encode_request,
    encode_verdict,
    parse_request,
    verdict_headers,
)
from worker.types import FaceResult, ModelInfo, ScanRequest, Verdict

LIMIT = 4096


def _msg(**fields):
    doc = {"schema_version": 1, "request_id": "r-1", "uri": "file:///v.mp4"}
    doc.update(fields)
    return json.dumps(doc).encode()


def test_valid_request_round_trips():
    req = ScanRequest("abc", "https://example.com/v.mp4", sha256="AB" * 32, metadata={"user": 7})
    parsed = parse_request(encode_request(req), LIMIT)
    assert parsed == ScanRequest("abc", "https://example.com/v.mp4", sha256="ab" * 32, metadata={"user": 7})


def test_minimal_request_gets_defaults():
    parsed = parse_request(_msg(), LIMIT)
    assert parsed == ScanRequest("r-1", "file:///v.mp4", None, {})


@pytest.mark.parametrize(
    "value, code, words",
    [
        (None, "malformed", "null"),
        (b"\xff\xfe\x00garbage", "malformed", "UTF-8"),
        (b"{not json", "malformed", "not JSON"),
        (b"[1, 2]", "malformed", "JSON object"),
        (b'{"request_id": "a", "uri": "b"}', "unknown_version", "missing"),
        (_msg(schema_version=2), "unknown_version", "2"),
        (_msg(schema_version="1"), "unknown_version", "'1'"),
        (_msg(schema_version=True), "unknown_version", "True"),
        (_msg(request_id=""), "invalid", "request_id"),
        (_msg(request_id=5), "invalid", "request_id"),
        (_msg(request_id="x" * 300), "invalid", "request_id"),
        (_msg(uri=None), "invalid", "uri"),
        (_msg(sha256="1234"), "invalid", "sha256"),
        (_msg(metadata=[1]), "invalid", "metadata"),
    ],
)
def test_bad_messages_are_rejected_with_a_reason(value, code, words):
    out = parse_request(value, LIMIT)
    assert isinstance(out, Rejected)
    assert out.code == code
    assert words in out.reason


def test_oversized_message_is_rejected_before_parsing():
    value = _msg(metadata={"pad": "x" * LIMIT})
    out = parse_request(value, LIMIT)
    assert out == Rejected("oversized", f"message is {len(value)} bytes, the limit is {LIMIT}")


def test_verdict_bytes_round_trip_and_headers():
    model = ModelInfo("convnextv2-atto", "0.1.0", "f" * 64, trained=False)
    v = Verdict(
        "r-9", "file:///a.mp4", "fake", score=0.8, threshold=0.5, model=model,
        faces=[FaceResult(0, 0.0, [1.0, 2.0, 3.0, 4.0], 0.99, 0.8)], metadata={"k": "v"},
    )
    back = decode_verdict(encode_verdict(v))
    assert back.request_id == "r-9" and back.label == "fake" and back.score == 0.8
    assert back.model == model and back.faces[0].box == [1.0, 2.0, 3.0, 4.0]
    assert json.loads(encode_verdict(v))["notice"].startswith("UNTRAINED")
    headers = dict(verdict_headers(v, None))
    assert headers[HEADER_SCHEMA_VERSION] == b"1"
    assert headers[HEADER_MODEL_VERSION] == b"0.1.0"
