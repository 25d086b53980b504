"""The whole path with a real worker: POST /v1/scans with a callback_url -> worker (thumbnails on)
-> verdict by long poll, face crops served, review page, and the signed webhook delivered."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from api.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, run_sender, verify
from tests.api.conftest import serve
from tests.api.test_webhooks import SECRET, Receiver
from tests.fixtures.stack import start_worker, wait_for_log
from worker.localstack import stop_process


def test_submit_scan_thumbnails_review_and_webhook(stack, untrained_bundle, carphone, tmp_path):
    settings = stack.settings(
        model_dir=str(untrained_bundle.path), allowed_roots=(str(Path(carphone).parent),), store_thumbnails=True,
        webhook_secret=SECRET, http_allow_private=True, webhook_backoff_s=0.1, api_rate_limit_per_s=1000.0,
    )
    settings = settings.replace(api_group_id=f"e2e-{settings.group_id}")
    receiver = Receiver()
    log = tmp_path / "worker.log"
    worker = start_worker(settings, log)
    served, stop_api = serve(settings)
    stop_hooks = threading.Event()
    sender = threading.Thread(target=run_sender, args=(settings.replace(api_port=0), stop_hooks), daemon=True)
    sender.start()
    try:
        wait_for_log(log, '"event": "partitions_assigned"', timeout_s=90, proc=worker)
        with served.client() as http:
            r = http.post("/v1/scans", params={"wait": 60}, json={
                "schema_version": 1, "request_id": "e2e-1", "uri": str(carphone), "metadata": {"case": "e2e"},
                "callback_url": receiver.url,
            })
            assert r.status_code == 200, r.text
            verdict = r.json()
            assert verdict["request_id"] == "e2e-1" and verdict["faces"] and verdict["callback_url"] == receiver.url
            assert "UNTRAINED" in verdict["notice"]
            crop = http.get("/v1/verdicts/e2e-1/faces/0.jpg")
            assert crop.status_code == 200 and crop.content[:2] == b"\xff\xd8"
            page = http.get("/review/e2e-1").text
            assert page.count('class="thumb"') == len(verdict["faces"]) and "UNTRAINED MODEL" in page
        deadline = time.monotonic() + 60
        while not receiver.got and time.monotonic() < deadline:
            time.sleep(0.2)
        headers, body = receiver.got[0]
        assert verify(SECRET, headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER], body)
        assert b'"request_id":"e2e-1"' in body
    finally:
        stop_hooks.set()
        stop_api()
        stop_process(worker.pid)
        receiver.close()
        sender.join(20)
