"""Webhooks: each verdict whose request carried a `callback_url` is POSTed there, signed.

`dfd-api webhooks` consumes the results topic in its own consumer group
(`<DFD_API_GROUP_ID>-webhooks`), so a slow receiver never slows the worker. Each batch of
verdicts is delivered concurrently, then its offsets are committed (at least once: a
receiver may get a verdict twice and should key on `X-DFD-Delivery`).

Signature: `X-DFD-Signature: v1=<hex HMAC-SHA256(DFD_WEBHOOK_SECRET, "<timestamp>." + body)>`
with `X-DFD-Timestamp: <unix seconds>`; `verify` below is what a receiver runs.
Every attempt goes through the video fetcher's SSRF guard (worker/media/sources.py): the host
is resolved once, refused if any address is not public (unless DFD_HTTP_ALLOW_PRIVATE), and
connected to by that vetted address. Redirects are not followed.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

import structlog

from api import metrics
from api.results import follow
# The fetcher's guard, reused so webhooks and video downloads refuse the same addresses.
from worker.media.sources import _PinnedHTTPConnection, _PinnedHTTPSConnection, _vetted_addresses
from worker.service.messages import is_callback_url
from worker.settings import Settings
from worker.types import ScanError

log = structlog.get_logger(__name__)

SIGNATURE_HEADER = "X-DFD-Signature"
TIMESTAMP_HEADER = "X-DFD-Timestamp"
DELIVERY_HEADER = "X-DFD-Delivery"
MAX_BACKOFF_S = 300.0
CONCURRENT_DELIVERIES = 16


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode("utf-8"), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify(secret: str, timestamp: str, signature: str, body: bytes, tolerance_s: float = 300, now: float | None = None) -> bool:
    """What a receiver checks: the signature over `timestamp.body`, and a timestamp no older than `tolerance_s`."""
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature or "")


@dataclass(frozen=True)
class Attempt:
    result: str  # 2xx, 4xx, 5xx, timeout, connection, refused
    retry: bool
    detail: str = ""


def post_once(url: str, body: bytes, headers: dict[str, str], settings: Settings) -> Attempt:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        host, port = parts.hostname, parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        return Attempt("refused", False, "malformed URL")
    if scheme not in ("http", "https") or not host:
        return Attempt("refused", False, "not an http(s) URL with a host")
    try:
        addresses = _vetted_addresses(host, port, settings.http_allow_private)
    except ScanError as exc:
        return Attempt("refused" if exc.code == "source_refused" else "connection", exc.transient, exc.reason)
    cls = _PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection
    conn = cls(host, port, addresses, settings.webhook_timeout_s, settings.webhook_timeout_s)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    started = time.perf_counter()
    try:
        conn.request("POST", target, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read(65536)  # the answer is not used; a bounded read lets the connection close cleanly
    except (TimeoutError, socket.timeout):
        return Attempt("timeout", True, "no answer in time")
    except ssl.SSLCertVerificationError as exc:
        return Attempt("connection", False, f"TLS certificate not trusted: {exc.verify_message}")
    except (OSError, http.client.HTTPException) as exc:
        return Attempt("connection", True, f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()
        metrics.WEBHOOK_SECONDS.observe(time.perf_counter() - started)
    if 200 <= resp.status < 300:
        return Attempt("2xx", False)
    if resp.status >= 500 or resp.status in (408, 429):
        return Attempt("5xx" if resp.status >= 500 else "4xx", True, f"HTTP {resp.status}")
    return Attempt("4xx" if resp.status >= 400 else "3xx", False, f"HTTP {resp.status}")


def deliver(url: str, body: bytes, delivery_id: str, settings: Settings, sleep: Callable[[float], None] = time.sleep) -> str:
    """POST `body` to `url` until it is accepted or the attempts are spent; returns the outcome."""
    delay = settings.webhook_backoff_s
    for attempt in range(1, settings.webhook_max_attempts + 1):
        ts = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "deepfake-stream-webhooks/1",
            TIMESTAMP_HEADER: str(ts),
            SIGNATURE_HEADER: sign(settings.webhook_secret, ts, body),
            DELIVERY_HEADER: delivery_id,
            "X-DFD-Attempt": str(attempt),
        }
        result = post_once(url, body, headers, settings)
        metrics.WEBHOOK_ATTEMPTS.labels(result.result).inc()
        if result.result == "2xx":
            return "delivered"
        if result.result == "refused":
            log.warning("webhook_refused", delivery=delivery_id, reason=result.detail)
            return "refused"
        if not result.retry:
            log.warning("webhook_rejected", delivery=delivery_id, reason=result.detail)
            return "rejected"
        log.info("webhook_retrying", delivery=delivery_id, attempt=attempt, reason=result.detail)
        if attempt < settings.webhook_max_attempts:
            sleep(min(delay, MAX_BACKOFF_S))
            delay *= 2
    return "gave_up"


def worst_case_s(settings: Settings) -> float:
    """Longest one delivery can take: every attempt timing out on connect and read, plus the backoff."""
    backoff = sum(min(settings.webhook_backoff_s * 2**i, MAX_BACKOFF_S) for i in range(settings.webhook_max_attempts - 1))
    return settings.webhook_max_attempts * 2 * settings.webhook_timeout_s + backoff


class Sender:
    """Delivers one polled batch of verdict records concurrently; returns when every delivery is settled."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.pool = ThreadPoolExecutor(CONCURRENT_DELIVERIES, thread_name_prefix="webhook")

    def handle(self, records: list) -> None:
        jobs = []
        for r in records:
            url = _callback_url(r.value)
            if url is None:
                continue
            delivery_id = f"{r.topic}-{r.partition}-{r.offset}"
            jobs.append(self.pool.submit(deliver, url, r.value, delivery_id, self.settings))
        for job in jobs:
            metrics.WEBHOOK_DELIVERIES.labels(job.result()).inc()

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def _callback_url(value: bytes | None) -> str | None:
    if not value:
        return None
    try:
        url = json.loads(value).get("callback_url")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None
    return url if url is not None and is_callback_url(url) else None


def run_sender(settings: Settings, stop: threading.Event) -> int:
    """`dfd-api webhooks`: follow the results topic until `stop`; metrics on DFD_API_PORT."""
    if not settings.webhook_secret:
        log.error("webhook_secret_missing", detail="set DFD_WEBHOOK_SECRET: deliveries are always signed")
        return 2
    budget_s = settings.kafka_max_poll_interval_ms / 1000
    if worst_case_s(settings) >= budget_s:
        log.error("webhook_retries_too_long", worst_case_s=worst_case_s(settings), max_poll_interval_s=budget_s,
                  detail="lower DFD_WEBHOOK_MAX_ATTEMPTS, _BACKOFF_S or _TIMEOUT_S, or raise DFD_KAFKA_MAX_POLL_INTERVAL_MS")
        return 2
    from prometheus_client import start_http_server

    if settings.api_port:
        start_http_server(settings.api_port)
    sender = Sender(settings)
    try:
        follow(settings, f"{settings.api_group_id}-webhooks", sender.handle, stop)
    finally:
        sender.close()
    return 0
