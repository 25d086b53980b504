"""Kafka message bodies: request JSON -> ScanRequest (or a dead-letter reason), Verdict -> bytes.

Requests are versioned JSON objects:
    {"schema_version": 1, "request_id": "...", "uri": "...", "sha256": null, "metadata": {}, "callback_url": null}
Every byte of a request is attacker-controlled, so `parse_request` is total: whatever it is
given, it returns a ScanRequest or a `Rejected` naming the cause (the runner dead-letters
it), and never raises. The bounds it holds (docs/streaming.md, "Request"):
- the message is at most `max_bytes` long, UTF-8, one JSON object without duplicate keys;
- arrays and objects nest at most MAX_DEPTH deep (checked on the bytes before decoding,
  so `[[[[...` cannot exhaust the stack);
- integers fit in 64 bits, other numbers are finite and short, NaN/Infinity are refused;
- no string anywhere (keys included) holds a lone surrogate (`"\\ud800"`), which could
  never be encoded as UTF-8 again (Kafka keys, Redis keys, the verdict);
- `request_id` matches REQUEST_ID_PATTERN; `uri` is at most MAX_URI_CHARS; `metadata` is
  an object of at most MAX_METADATA_BYTES once re-encoded.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from worker.types import REQUEST_SCHEMA_VERSION, ModelInfo, ScanRequest, Verdict

SUPPORTED_REQUEST_VERSIONS = (REQUEST_SCHEMA_VERSION,)
# Safe as a Kafka key, a Redis key part, a log field and a file name: uuid4 strings fit.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MAX_URI_CHARS = 8192
MAX_DEPTH = 16  # nested arrays/objects, the request object itself included
MAX_METADATA_BYTES = 16 * 1024  # compact JSON, as it is copied into every verdict
MAX_NUMBER_CHARS = 32  # longest number literal
_INT64 = range(-(2**63), 2**63)
_SHA256 = re.compile(r"[0-9a-f]{64}")
# A JSON string, possibly unterminated (brackets inside strings do not nest anything).
# Linear: the optional closing quote means a match never fails, so it never backtracks.
_STRING = re.compile(rb'"(?:[^"\\]+|\\.)*"?', re.DOTALL)
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
MAX_CALLBACK_URL_CHARS = 2048

# Header names on verdict messages, so consumers can route without parsing the body.
HEADER_SCHEMA_VERSION = "dfd-schema-version"
HEADER_MODEL_VERSION = "dfd-model-version"
HEADER_MODEL_SHA256 = "dfd-model-sha256"
HEADER_LABEL = "dfd-label"
HEADER_CONTENT_TYPE = "content-type"


@dataclass(frozen=True)
class Rejected:
    """Why a message cannot become a request: `code` is one of malformed, oversized, unknown_version, invalid.

    `reason` is ASCII, short, and shows hostile values only through `ascii()`, so it is safe
    in a Kafka header and a log line whatever the message held.
    """

    code: str
    reason: str


class _Refusal(Exception):
    """Raised inside parsing (also from json's hooks) to stop at the first broken rule."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.rejected = Rejected(code, reason)


def parse_request(value: bytes | None, max_bytes: int) -> ScanRequest | Rejected:
    """Validate one message body; never raises, whatever `value` holds."""
    try:
        return _parse(value, max_bytes)
    except _Refusal as refusal:
        return refusal.rejected
    except Exception as exc:  # a rule this parser forgot: still an answer, never a crash
        return Rejected("malformed", f"unreadable request ({type(exc).__name__})")


def _parse(value: bytes | None, max_bytes: int) -> ScanRequest:
    if value is None:
        raise _Refusal("malformed", "empty message (null value)")
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise _Refusal("malformed", f"expected bytes, got {type(value).__name__}")
    value = bytes(value)
    if len(value) > max_bytes:
        raise _Refusal("oversized", f"message is {len(value)} bytes, the limit is {max_bytes}")
    depth = _nesting_depth(value)
    if depth > MAX_DEPTH:
        raise _Refusal("malformed", f"arrays/objects nest deeper than {MAX_DEPTH} levels")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Refusal("malformed", f"not UTF-8: {exc}") from None
    try:
        doc = json.loads(
            text, parse_int=_int, parse_float=_float, parse_constant=_constant, object_pairs_hook=_object
        )
    except json.JSONDecodeError as exc:
        raise _Refusal("malformed", f"not JSON: {exc}") from None
    except RecursionError:  # the pre-scan should make this unreachable; kept as a backstop
        raise _Refusal("malformed", f"arrays/objects nest deeper than {MAX_DEPTH} levels") from None
    if not isinstance(doc, dict):
        raise _Refusal("malformed", f"expected a JSON object, got {type(doc).__name__}")
    try:  # one pass in C; only a document that fails it is walked to say where
        json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        _check_strings(doc)
        raise

    version = doc.get("schema_version")
    if version is None:
        raise _Refusal("unknown_version", "schema_version is missing")
    if type(version) is not int or version not in SUPPORTED_REQUEST_VERSIONS:
        raise _Refusal(
            "unknown_version",
            f"schema_version {_shown(version)} is not supported (supported: {list(SUPPORTED_REQUEST_VERSIONS)})",
        )
    request_id = doc.get("request_id")
    if not isinstance(request_id, str) or not REQUEST_ID_PATTERN.fullmatch(request_id):
        raise _Refusal(
            "invalid", f"request_id must be 1 to 128 characters of A-Z a-z 0-9 . _ : - (got {_shown(request_id)})"
        )
    uri = doc.get("uri")
    if not isinstance(uri, str) or not uri.strip():
        raise _Refusal("invalid", "uri must be a non-empty string")
    if len(uri) > MAX_URI_CHARS:
        raise _Refusal("invalid", f"uri is longer than {MAX_URI_CHARS} characters")
    sha256 = doc.get("sha256")
    if sha256 is not None:
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256.lower()):
            raise _Refusal("invalid", "sha256 must be 64 hexadecimal characters or null")
        sha256 = sha256.lower()
    metadata = doc.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise _Refusal("invalid", "metadata must be a JSON object")
    size = len(json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        raise _Refusal("invalid", f"metadata is {size} bytes as JSON, the limit is {MAX_METADATA_BYTES}")
    callback_url = doc.get("callback_url")
    if callback_url is not None and not is_callback_url(callback_url):
        raise _Refusal("invalid", f"callback_url must be an http(s) URL with a host, at most {MAX_CALLBACK_URL_CHARS} characters")
    return ScanRequest(request_id=request_id, uri=uri, sha256=sha256, metadata=metadata, callback_url=callback_url)


def is_callback_url(value: object) -> bool:
    """Shape only; where it points is checked by the webhook sender's SSRF guard at delivery."""
    if not isinstance(value, str) or len(value) > MAX_CALLBACK_URL_CHARS or not value.isprintable() or " " in value:
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises for a port that is not a number)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _nesting_depth(value: bytes) -> int:
    """Deepest array/object nesting of a JSON text, brackets inside strings not counted.

    Done on the bytes, in C and numpy, before any decoding: a text with few brackets is not
    scanned at all, and a 64 KiB one of nothing but brackets takes well under a millisecond.
    """
    if value.count(b"[") + value.count(b"{") <= MAX_DEPTH:
        return 0
    brackets = _STRING.sub(b"", value).translate(None, _NOT_BRACKETS)
    steps = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((steps == ord("[")) | (steps == ord("{")), 1, -1)
    return int(np.cumsum(steps).max(initial=0))


def _int(literal: str) -> int:
    if len(literal) > MAX_NUMBER_CHARS:
        raise _Refusal("invalid", f"a number has {len(literal)} digits; integers must fit in 64 bits")
    number = int(literal)
    if number not in _INT64:
        raise _Refusal("invalid", f"integer {literal} does not fit in 64 bits")
    return number


def _float(literal: str) -> float:
    if len(literal) > MAX_NUMBER_CHARS:
        raise _Refusal("invalid", f"a number is {len(literal)} characters long, the limit is {MAX_NUMBER_CHARS}")
    number = float(literal)
    if not math.isfinite(number):
        raise _Refusal("invalid", f"number {literal} is out of range")
    return number


def _constant(literal: str) -> Any:
    raise _Refusal("invalid", f"{literal} is not a JSON number")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        # two parsers may keep different copies of a duplicated field: refuse the ambiguity
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise _Refusal("malformed", f"duplicate key {_shown(dup)}")
    return obj


def _check_strings(doc: Any) -> None:
    """Refuse the first lone surrogate in a key or string value, saying where it is."""
    stack: list[tuple[str, Any]] = [("", doc)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            if not _encodes(item):
                raise _Refusal("invalid", f"{_shown(where or '/', 64)} holds a lone UTF-16 surrogate (not valid Unicode)")
        elif isinstance(item, dict):
            for key, val in item.items():
                if not _encodes(key):
                    raise _Refusal("invalid", f"a key in {_shown(where or '/', 64)} holds a lone UTF-16 surrogate")
                stack.append((f"{where}/{key}", val))
        elif isinstance(item, list):
            stack.extend((f"{where}/{i}", v) for i, v in enumerate(item))


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(value: Any, limit: int = 40) -> str:
    """A hostile value as it may appear in a reason: ASCII, bounded."""
    text = ascii(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def encode_request(request: ScanRequest) -> bytes:
    """The request as a message body; ValueError if the worker would dead-letter it, so a
    producer learns at submit time rather than from the dead-letter topic."""
    body = json.dumps(request.to_dict(), separators=(",", ":")).encode("utf-8")
    checked = parse_request(body, len(body))
    if isinstance(checked, Rejected):
        raise ValueError(f"the worker would refuse this request ({checked.code}): {checked.reason}")
    return body


def encode_verdict(verdict: Verdict) -> bytes:
    return json.dumps(verdict.to_dict(), separators=(",", ":")).encode("utf-8")


def decode_verdict(value: bytes) -> Verdict:
    doc = json.loads(value.decode("utf-8"))
    doc.pop("notice", None)  # derived from the model on the way out
    return Verdict.from_dict(doc)


def verdict_headers(verdict: Verdict, model: ModelInfo | None) -> list[tuple[str, bytes]]:
    model = verdict.model or model
    headers = [
        (HEADER_CONTENT_TYPE, b"application/json"),
        (HEADER_SCHEMA_VERSION, str(verdict.schema_version).encode()),
        (HEADER_LABEL, verdict.label.encode()),
    ]
    if model is not None:
        headers.append((HEADER_MODEL_VERSION, model.version.encode()))
        headers.append((HEADER_MODEL_SHA256, model.sha256.encode()))
    return headers
