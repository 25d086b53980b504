"""A request's callback_url: validated by parse_request, carried into its verdict (for dfd-api's webhooks)."""

from __future__ import annotations

import json

import pytest

from worker.service.messages import Rejected, decode_verdict, encode_request, encode_verdict, parse_request
from worker.types import ScanError, ScanRequest, Verdict


def _parse(**fields):
    return parse_request(json.dumps({"schema_version": 1, "request_id": "r", "uri": "a.mp4", **fields}).encode(), 65536)


def test_callback_url_round_trips_and_is_optional():
    request = _parse(callback_url="https://hooks.example.com/dfd?x=1")
    assert request.callback_url == "https://hooks.example.com/dfd?x=1"
    assert parse_request(encode_request(request), 65536) == request
    assert _parse().callback_url is None and "callback_url" not in _parse().to_dict()


@pytest.mark.parametrize(
    "url", [5, "", "ftp://example.com/x", "https://", "javascript:alert(1)", "https://exa mple.com/", "http://h:99999999/",
            "https://example.com/" + "a" * 2100, "https://example.com/\n"],
)
def test_bad_callback_urls_are_invalid(url):
    rejected = _parse(callback_url=url)
    assert isinstance(rejected, Rejected) and rejected.code == "invalid" and "callback_url" in rejected.reason


def test_verdicts_carry_the_callback_url_only_when_there_is_one():
    request = ScanRequest("r", "a.mp4", callback_url="https://hooks.example.com/")
    verdict = Verdict.error(request, ScanError("source_refused", "no"))
    assert decode_verdict(encode_verdict(verdict)).callback_url == "https://hooks.example.com/"
    assert "callback_url" not in Verdict("r", "a.mp4", "no_face").to_dict()
