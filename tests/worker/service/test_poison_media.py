"""The media children and poison counting together: a request whose download hangs past the
hard deadline every time (its child killed each time) ends as `poison` in the dead-letter
topic after DFD_MAX_ATTEMPTS, within one worker process, and the requests behind it go on."""

from __future__ import annotations

import signal
import time

import pytest

from producer.client import ScanClient
from tests.fixtures.hostile_media import DripServer
from tests.fixtures.stack import committed_offsets, read_topic, start_worker
from worker.service.dead_letter import HEADER_CODE, HEADER_REASON
from worker.types import ScanRequest

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def test_a_download_killed_at_the_deadline_every_time_becomes_poison(stack, untrained_bundle, carphone, tmp_path):
    drip = DripServer()
    settings = stack.settings(
        partitions=1, model_dir=str(untrained_bundle.path), allowed_roots=(str(carphone.parent),),
        http_allow_private=True, media_deadline_s=2.0, max_attempts=3, retry_max_attempts=1,
    )
    client = ScanClient(settings)
    client.submit([ScanRequest("hangs", drip.url), ScanRequest("after", str(carphone))])
    client.close()
    log = tmp_path / "worker.log"
    proc = start_worker(settings, log)
    try:
        deadline = time.monotonic() + 120
        letters = []
        while not letters and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            letters = read_topic(settings.kafka_bootstrap, settings.dead_letter_topic, idle_s=0.5)
        [letter] = letters
        assert letter.headers[HEADER_CODE] == b"poison" and letter.json()["request_id"] == "hangs"
        assert b"3 handling attempts" in letter.headers[HEADER_REASON]
        # each attempt before the last was a child killed at the deadline, logged as such
        failed = [line for line in log.read_text().splitlines() if "attempt_failed" in line]
        assert len(failed) >= 2 and all("timeout" in line for line in failed)
        [verdict] = read_topic(settings.kafka_bootstrap, settings.results_topic, count=1, timeout_s=120)
        assert verdict.json()["request_id"] == "after" and verdict.json()["label"] in ("fake", "real")
        deadline = time.monotonic() + 30
        while committed_offsets(settings, 1)[0] != 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert committed_offsets(settings, 1)[0] == 2
        assert proc.poll() is None  # the same process did all of it
    finally:
        drip.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
