"""Every Prometheus metric of dfd-api, declared once with its meaning (served at /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter("dfd_api_requests_total", "HTTP requests answered, by route and status code.", ["route", "status"])
REQUEST_SECONDS = Histogram(
    "dfd_api_request_seconds", "Time to answer an HTTP request (to the first byte for streams), by route.", ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60),
)
AUTH_FAILURES = Counter("dfd_api_auth_failures_total", "Requests refused: missing_key, unknown_key (401) or scope (403).", ["reason"])
RATE_LIMITED = Counter("dfd_api_rate_limited_total", "Requests refused with 429 because their key was over its rate.")
SCANS_SUBMITTED = Counter("dfd_api_scans_submitted_total", "Scan requests published to the requests topic.")
SCANS_REJECTED = Counter("dfd_api_scans_rejected_total", "Scan requests refused by validation, by parse_request's code.", ["code"])
INDEXED = Counter("dfd_api_indexed_total", "Verdicts added to the review page's index of recent verdicts.")
WEBHOOK_DELIVERIES = Counter(
    "dfd_webhook_deliveries_total",
    "Webhook deliveries by final outcome: delivered, rejected (a 4xx answer), refused (SSRF guard), gave_up (retries spent).",
    ["outcome"],
)
WEBHOOK_ATTEMPTS = Counter(
    "dfd_webhook_attempts_total", "Webhook POST attempts by result: 2xx, 4xx, 5xx, timeout, connection, refused.", ["result"]
)
WEBHOOK_SECONDS = Histogram(
    "dfd_webhook_attempt_seconds", "Time of one webhook POST attempt.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
