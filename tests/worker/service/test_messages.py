"""Request parsing: every kind of bad message gets a reason, good ones become ScanRequests."""

import json
import uuid

import pytest

from worker.service.messages import (
    HEADER_MODEL_VERSION,
    MAX_DEPTH,
    MAX_METADATA_BYTES,
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
        (_msg(schema_version=1.0), "unknown_version", "1.0"),
        (_msg(schema_version={"v": 1}), "unknown_version", "{'v': 1}"),
        (_msg(request_id=""), "invalid", "request_id"),
        (_msg(request_id=5), "invalid", "request_id"),
        (_msg(request_id="x" * 129), "invalid", "request_id"),
        (_msg(request_id="a b"), "invalid", "request_id"),
        (_msg(request_id="../etc"), "invalid", "request_id"),
        (_msg(request_id="r\n1"), "invalid", "request_id"),
        (_msg(request_id="caf\u00e9"), "invalid", "request_id"),
        (_msg(request_id=["r"]), "invalid", "request_id"),
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


def test_uuid4_request_ids_and_the_documented_charset_are_accepted():
    for rid in [str(uuid.uuid4()), uuid.uuid4().hex, "a", "A-z_0.9:x", "x" * 128]:
        assert parse_request(_msg(request_id=rid), LIMIT) == ScanRequest(rid, "file:///v.mp4")


def _depth(n: int) -> bytes:
    """A request whose metadata makes the whole document nest `n` levels deep."""
    inner = "[" * (n - 2) + "1" + "]" * (n - 2)
    return (
        '{"schema_version": 1, "request_id": "r-1", "uri": "file:///v.mp4", "metadata": {"deep": ' + inner + "}}"
    ).encode()


def test_nesting_is_bounded_before_decoding():
    assert isinstance(parse_request(_depth(MAX_DEPTH), LIMIT), ScanRequest)
    out = parse_request(_depth(MAX_DEPTH + 1), LIMIT)
    assert out.code == "malformed" and f"deeper than {MAX_DEPTH}" in out.reason
    # the crash of issue 8: far below the size limit, far beyond the interpreter's recursion limit
    out = parse_request(b"[" * 5000, 64 * 1024)
    assert out.code == "malformed" and "deeper" in out.reason
    out = parse_request(b'{"a": ' * 50_000 + b"1" + b"}" * 50_000, 1 << 20)
    assert out.code == "malformed" and "deeper" in out.reason


def test_brackets_inside_strings_do_not_count_as_nesting():
    rid_ok = _msg(metadata={"text": "[[[[{{{{" * 50, "quote": '\\"[[[[[[[[[[[[[[[[[[[[[[[["'})
    assert isinstance(parse_request(rid_ok, LIMIT), ScanRequest)


@pytest.mark.parametrize(
    "number, words",
    [
        ("9" * 5000, "5000 digits"),  # int() refuses these: the ValueError crash of issue 8
        ("9" * 30, "64 bits"),
        (str(2**63), "64 bits"),
        ("-" + str(2**63 + 1), "64 bits"),
        ("1e999", "out of range"),
        ("-1e999", "out of range"),
        ("0." + "1" * 40, "characters long"),
        ("NaN", "NaN"),
        ("Infinity", "Infinity"),
        ("-Infinity", "-Infinity"),
    ],
)
def test_number_sizes_are_bounded(number, words):
    value = b'{"schema_version": 1, "request_id": "r", "uri": "u", "metadata": {"n": ' + number.encode() + b"}}"
    out = parse_request(value, 64 * 1024)
    assert isinstance(out, Rejected) and out.code == "invalid", out
    assert words in out.reason


def test_64_bit_integers_and_ordinary_floats_pass():
    meta = {"big": 2**63 - 1, "small": -(2**63), "f": 1.5e300, "g": -0.000123}
    assert parse_request(_msg(metadata=meta), LIMIT).metadata == meta


@pytest.mark.parametrize(
    "where",
    [
        '"request_id": "\\ud800", "uri": "u"',
        '"request_id": "r", "uri": "/v\\udfff.mp4"',
        '"request_id": "r", "uri": "u", "metadata": {"k": "\\udbff"}',
        '"request_id": "r", "uri": "u", "metadata": {"\\ud800": 1}',
        '"request_id": "r", "uri": "u", "metadata": {"k": [1, {"j": "ok\\ud800ok"}]}',
        '"request_id": "r", "uri": "u", "extra": "\\ud800"',
    ],
)
def test_lone_surrogates_are_refused_anywhere(where):
    value = ('{"schema_version": 1, ' + where + "}").encode()
    out = parse_request(value, LIMIT)
    assert isinstance(out, Rejected) and out.code == "invalid", out
    assert "surrogate" in out.reason
    out.reason.encode("ascii")  # the reason itself is safe to put in a header or a log


def test_paired_surrogate_escapes_are_ordinary_characters():
    value = b'{"schema_version": 1, "request_id": "r", "uri": "/v.mp4", "metadata": {"e": "\\ud83d\\ude00"}}'
    assert parse_request(value, LIMIT).metadata == {"e": "\U0001f600"}


def test_duplicate_keys_are_refused():
    value = b'{"schema_version": 1, "request_id": "a", "uri": "u", "request_id": "b"}'
    assert parse_request(value, LIMIT) == Rejected("malformed", "duplicate key 'request_id'")


def test_metadata_size_is_bounded():
    assert isinstance(parse_request(_msg(metadata={"pad": "x" * (MAX_METADATA_BYTES - 20)}), 1 << 20), ScanRequest)
    out = parse_request(_msg(metadata={"pad": "x" * MAX_METADATA_BYTES}), 1 << 20)
    assert out.code == "invalid" and "metadata" in out.reason


@pytest.mark.parametrize("value", [b"", b"\x00", b"\xed\xa0\x80", b"null", b'"str"', bytearray(b"{}"), memoryview(b"[]")])
def test_odd_values_are_answered_never_raised(value):
    assert isinstance(parse_request(value, LIMIT), Rejected)


def test_reasons_never_echo_hostile_values_unbounded():
    out = parse_request(_msg(request_id="\u2028" + "x" * 5000), 1 << 20)
    assert out.code == "invalid" and len(out.reason) < 200
    out.reason.encode("ascii")


def test_uri_length_is_bounded():
    assert parse_request(_msg(uri="/" + "v" * 8191), 1 << 20).uri == "/" + "v" * 8191
    out = parse_request(_msg(uri="/" + "v" * 8192), 1 << 20)
    assert out.code == "invalid" and "uri" in out.reason


def test_a_failure_nobody_foresaw_is_still_an_answer(monkeypatch):
    import worker.service.messages as messages

    def broken(_literal):
        raise KeyError("a bug in a check")

    monkeypatch.setattr(messages, "_int", broken)
    assert parse_request(_msg(), LIMIT) == Rejected("malformed", "unreadable request (KeyError)")
    assert parse_request(10**12, LIMIT) == Rejected("malformed", "expected bytes, got int")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "request_",
    [ScanRequest("has space", "/v.mp4"), ScanRequest("r", "/v.mp4", metadata={"x": float("nan")}),
     ScanRequest("r", "/v.mp4", metadata={"k": "\ud800"}), ScanRequest("r", "/v.mp4", metadata={"n": 2**64})],
    ids=["request_id", "nan", "surrogate", "big_int"],
)
def test_producers_cannot_encode_what_the_worker_would_refuse(request_):
    with pytest.raises(ValueError, match="the worker would refuse this request"):
        encode_request(request_)
