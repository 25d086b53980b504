"""Kafka message bodies: request JSON -> ScanRequest (or a dead-letter reason), Verdict -> bytes.

Requests are versioned JSON objects:
    {"schema_version": 1, "request_id": "...", "uri": "...", "sha256": null, "metadata": {}, "callback_url": null}
Anything else is rejected with a `Rejected` naming the cause; the runner dead-letters it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from worker.types import REQUEST_SCHEMA_VERSION, ModelInfo, ScanRequest, Verdict

SUPPORTED_REQUEST_VERSIONS = (REQUEST_SCHEMA_VERSION,)
MAX_REQUEST_ID_CHARS = 256
MAX_URI_CHARS = 8192
MAX_CALLBACK_URL_CHARS = 2048
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

# Header names on verdict messages, so consumers can route without parsing the body.
HEADER_SCHEMA_VERSION = "dfd-schema-version"
HEADER_MODEL_VERSION = "dfd-model-version"
HEADER_MODEL_SHA256 = "dfd-model-sha256"
HEADER_LABEL = "dfd-label"
HEADER_CONTENT_TYPE = "content-type"


@dataclass(frozen=True)
class Rejected:
    """Why a message cannot become a request: `code` is one of malformed, oversized, unknown_version, invalid."""

    code: str
    reason: str


def parse_request(value: bytes | None, max_bytes: int) -> ScanRequest | Rejected:
    """Validate one message body; never raises."""
    if value is None:
        return Rejected("malformed", "empty message (null value)")
    if len(value) > max_bytes:
        return Rejected("oversized", f"message is {len(value)} bytes, the limit is {max_bytes}")
    try:
        doc = json.loads(value.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return Rejected("malformed", f"not UTF-8: {exc}")
    except json.JSONDecodeError as exc:
        return Rejected("malformed", f"not JSON: {exc}")
    if not isinstance(doc, dict):
        return Rejected("malformed", f"expected a JSON object, got {type(doc).__name__}")
    version = doc.get("schema_version")
    if version is None:
        return Rejected("unknown_version", "schema_version is missing")
    if isinstance(version, bool) or version not in SUPPORTED_REQUEST_VERSIONS:
        return Rejected(
            "unknown_version", f"schema_version {version!r} is not supported (supported: {list(SUPPORTED_REQUEST_VERSIONS)})"
        )
    request_id = doc.get("request_id")
    if not isinstance(request_id, str) or not request_id.strip():
        return Rejected("invalid", "request_id must be a non-empty string")
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        return Rejected("invalid", f"request_id is longer than {MAX_REQUEST_ID_CHARS} characters")
    uri = doc.get("uri")
    if not isinstance(uri, str) or not uri.strip():
        return Rejected("invalid", "uri must be a non-empty string")
    if len(uri) > MAX_URI_CHARS:
        return Rejected("invalid", f"uri is longer than {MAX_URI_CHARS} characters")
    sha256 = doc.get("sha256")
    if sha256 is not None:
        if not isinstance(sha256, str) or not _SHA256.match(sha256.lower()):
            return Rejected("invalid", "sha256 must be 64 hexadecimal characters or null")
        sha256 = sha256.lower()
    metadata = doc.get("metadata", {})
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        return Rejected("invalid", "metadata must be a JSON object")
    callback_url = doc.get("callback_url")
    if callback_url is not None and not is_callback_url(callback_url):
        return Rejected("invalid", f"callback_url must be an http(s) URL with a host, at most {MAX_CALLBACK_URL_CHARS} characters")
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


def encode_request(request: ScanRequest) -> bytes:
    return json.dumps(request.to_dict(), separators=(",", ":")).encode("utf-8")


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
