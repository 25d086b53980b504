"""Webhooks: signed POSTs to a real local receiver, retries with backoff, the SSRF guard, the sender's group."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from api import metrics
from api.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, deliver, run_sender, sign, verify, worst_case_s
from tests.api.conftest import make_verdict
from tests.api.test_stream import publish
from worker.settings import Settings

SECRET = "s3cret-for-tests"


class Receiver:
    """A webhook receiver on 127.0.0.1 that answers with the statuses it is given, in order (then 200)."""

    def __init__(self, statuses=()):
        self.statuses = list(statuses)
        self.got: list[tuple[dict, bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.got.append((dict(self.headers), body))
                status = outer.statuses.pop(0) if outer.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook?tenant=1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def hook_settings(**kw) -> Settings:
    base = {"webhook_secret": SECRET, "http_allow_private": True, "webhook_backoff_s": 0.01, "webhook_timeout_s": 2.0}
    return Settings(**{**base, **kw})


def test_signature_verifies_and_rejects_tampering_and_old_timestamps():
    body = b'{"request_id":"r"}'
    sig = sign(SECRET, 1_700_000_000, body)
    assert verify(SECRET, "1700000000", sig, body, now=1_700_000_100)
    assert not verify(SECRET, "1700000000", sig, body + b" ", now=1_700_000_100)
    assert not verify("other", "1700000000", sig, body, now=1_700_000_100)
    assert not verify(SECRET, "1700000000", sig, body, now=1_700_000_000 + 301)
    assert not verify(SECRET, "nonsense", sig, body)


def test_delivery_is_signed_and_retried_with_backoff_on_5xx(receiver):
    receiver.statuses = [503, 500]
    sleeps = []
    outcome = deliver(receiver.url, b'{"a":1}', "t-0-1", hook_settings(webhook_backoff_s=0.5), sleep=sleeps.append)
    assert outcome == "delivered" and len(receiver.got) == 3
    assert sleeps == [0.5, 1.0]  # doubled at each attempt
    headers, body = receiver.got[-1]
    assert body == b'{"a":1}' and headers["X-DFD-Attempt"] == "3" and headers["X-DFD-Delivery"] == "t-0-1"
    assert verify(SECRET, headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER], body)


def test_4xx_is_not_retried_and_attempts_are_bounded(receiver):
    receiver.statuses = [400]
    assert deliver(receiver.url, b"{}", "d", hook_settings(), sleep=lambda s: None) == "rejected"
    assert len(receiver.got) == 1
    receiver.statuses = [500] * 10
    assert deliver(receiver.url, b"{}", "d", hook_settings(webhook_max_attempts=3), sleep=lambda s: None) == "gave_up"
    assert len(receiver.got) == 1 + 3


@pytest.mark.parametrize("status, attempts, outcome", [(429, 2, "delivered"), (408, 2, "delivered"), (302, 1, "rejected"), (404, 1, "rejected")])
def test_which_answers_are_retried(receiver, status, attempts, outcome):
    receiver.statuses = [status]
    assert deliver(receiver.url, b"{}", "d", hook_settings(), sleep=lambda s: None) == outcome
    assert len(receiver.got) == attempts


def test_backoff_is_capped_at_five_minutes(receiver):
    receiver.statuses = [500] * 4
    sleeps = []
    deliver(receiver.url, b"{}", "d", hook_settings(webhook_backoff_s=200, webhook_max_attempts=4), sleep=sleeps.append)
    assert sleeps == [200, 300, 300]


def test_private_addresses_are_refused_by_the_fetchers_ssrf_guard(receiver):
    guarded = hook_settings().replace(http_allow_private=False)
    for url in (receiver.url, "http://169.254.169.254/latest/meta-data", "http://[::1]:9/x", "http://10.0.0.1/x"):
        assert deliver(url, b"{}", "d", guarded, sleep=lambda s: None) == "refused", url
    assert receiver.got == []


def test_retry_budget_must_fit_the_poll_interval():
    assert worst_case_s(hook_settings(webhook_max_attempts=3, webhook_timeout_s=1.0, webhook_backoff_s=1.0)) == 3 * 2 + 1 + 2
    too_long = hook_settings(webhook_max_attempts=20, webhook_timeout_s=30.0)
    assert run_sender(too_long, threading.Event()) == 2
    assert run_sender(hook_settings().replace(webhook_secret=""), threading.Event()) == 2


def test_sender_consumes_the_results_topic_in_its_own_group(stack, receiver):
    settings = stack.settings().replace(webhook_secret=SECRET, http_allow_private=True, webhook_backoff_s=0.05, api_port=0)
    settings = settings.replace(api_group_id=f"hooks-{settings.group_id}")
    receiver.statuses = [502]  # the first attempt fails: retried
    with_hook = make_verdict("h-1", callback_url=receiver.url)
    before = metrics.WEBHOOK_DELIVERIES.labels("delivered")._value.get()
    publish(settings, [make_verdict("h-0"), with_hook])  # h-0 has no callback_url: nothing is sent for it
    stop = threading.Event()
    thread = threading.Thread(target=run_sender, args=(settings, stop), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 40
        while len(receiver.got) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(20)
    assert [json.loads(body)["request_id"] for _, body in receiver.got] == ["h-1", "h-1"]
    headers, body = receiver.got[-1]
    assert json.loads(body) == with_hook.to_dict()
    assert verify(SECRET, headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER], body)
    assert metrics.WEBHOOK_DELIVERIES.labels("delivered")._value.get() == before + 1

    from kafka import KafkaConsumer, TopicPartition

    probe = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=f"{settings.api_group_id}-webhooks",
                          enable_auto_commit=False)
    try:
        committed = sum(probe.committed(TopicPartition(settings.results_topic, p)) or 0 for p in (0, 1))
    finally:
        probe.close()
    assert committed == 2  # both verdicts done and committed in the sender's own group
