"""A bounded fuzz of parse_request (hypothesis): it never raises, and what it accepts round-trips.

Three kinds of input: raw bytes, request-shaped JSON built from hostile parts (lone
surrogates, huge and non-finite numbers, deep nesting, odd types), and byte-level mutations
of valid requests. Each test runs 150 examples, a few seconds in all, in CI.
"""

from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from worker.service.messages import (
    REQUEST_ID_PATTERN,
    Rejected,
    decode_verdict,
    encode_request,
    encode_verdict,
    parse_request,
)
from worker.types import ScanError, ScanRequest, Verdict

LIMIT = 64 * 1024
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Every code point, lone surrogates included (they reach Python strings through \ud800 escapes).
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=19, max_value=4000).map(lambda n: int("9" * n)),  # past int64, up to int()'s limit
)
leaves = st.one_of(st.none(), st.booleans(), numbers, any_text)
json_values = st.recursive(
    leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(any_text, inner, max_size=4)),
    max_leaves=12,
)
request_ids = st.one_of(st.from_regex(REQUEST_ID_PATTERN, fullmatch=True), any_text, json_values)
metadata = st.dictionaries(any_text, json_values, max_size=5)
hostile_requests = st.fixed_dictionaries(
    {},
    optional={
        "schema_version": st.one_of(st.just(1), json_values),
        "request_id": request_ids,
        "uri": st.one_of(any_text, st.just("file:///v.mp4"), json_values),
        "sha256": st.one_of(st.none(), st.text("0123456789abcdefABCDEF", min_size=64, max_size=64), json_values),
        "metadata": st.one_of(metadata, json_values),
    },
)
# Valid fields around hostile metadata and URIs, so accepted requests (and their round trip) are common.
plausible_requests = st.fixed_dictionaries(
    {
        "schema_version": st.just(1),
        "request_id": st.from_regex(REQUEST_ID_PATTERN, fullmatch=True),
        "uri": any_text.filter(str.strip),
    },
    optional={"sha256": st.none(), "metadata": metadata, "extra": json_values},
)
requests = st.one_of(hostile_requests, plausible_requests)


def _deep(depth: int) -> bytes:
    return b'{"schema_version":1,"request_id":"r","uri":"u","metadata":' + b"[" * depth + b"]" * depth + b"}"


def _check(value: bytes | None) -> None:
    out = parse_request(value, LIMIT)  # must not raise, whatever value holds
    if isinstance(out, Rejected):
        assert out.code in ("malformed", "oversized", "unknown_version", "invalid")
        out.reason.encode("ascii")  # safe in a Kafka header and a log line
        assert len(out.reason) < 400
        return
    assert isinstance(out, ScanRequest)
    event("accepted")  # --hypothesis-show-statistics shows how often the round trip was checked
    assert REQUEST_ID_PATTERN.fullmatch(out.request_id)
    out.request_id.encode("ascii")  # the Kafka key and the Redis key
    # what was accepted can be written out again, and reads back the same
    body = encode_request(out)
    body.decode("utf-8")
    assert parse_request(body, 1 << 20) == out
    verdict = Verdict.error(out, ScanError("source_refused", "fuzz"))
    encoded = encode_verdict(verdict)
    json.loads(encoded, parse_constant=lambda c: (_ for _ in ()).throw(AssertionError(c)))  # strict JSON
    assert decode_verdict(encoded).metadata == out.metadata


@FUZZ
@given(st.binary(max_size=4096))
def test_raw_bytes_never_raise(value):
    _check(value)


@FUZZ
@given(requests)
def test_hostile_json_requests_never_raise_and_accepted_ones_round_trip(doc):
    # ensure_ascii writes lone surrogates as \udxxx escapes, as an attacker would
    _check(json.dumps(doc).encode("utf-8"))


@FUZZ
@given(
    requests,
    st.lists(st.tuples(st.integers(min_value=0, max_value=1 << 16), st.binary(min_size=0, max_size=3)), max_size=6),
)
def test_mutated_requests_never_raise(doc, edits):
    body = bytearray(json.dumps(doc).encode())
    for position, data in edits:
        at = position % (len(body) + 1)
        body[at : at + len(data) // 2] = data  # overwrite, insert or delete a few bytes
    _check(bytes(body))


@FUZZ
@given(st.integers(min_value=0, max_value=3000), st.sampled_from([b"[", b"{", b'{"a":', b"[{", b'["', b'"\\"[']))
def test_nesting_of_any_depth_never_raises(depth, opener):
    _check(opener * depth)
    _check(_deep(depth))


def test_floats_that_are_accepted_stay_finite():
    out = parse_request(b'{"schema_version":1,"request_id":"r","uri":"u","metadata":{"x":1.7976931348623157e308}}', LIMIT)
    assert isinstance(out, ScanRequest) and math.isfinite(out.metadata["x"])
