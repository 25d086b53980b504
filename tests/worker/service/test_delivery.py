"""Delivery promises of docs/streaming.md with real worker processes, the real broker and Redis:
bounded redo after kill -9 (and replay of known verdicts), poison containment across restarts,
liveness of a healthy worker."""

from __future__ import annotations

import signal
import threading
import time
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis

from producer.client import ScanClient
from tests.fixtures.stack import committed_offsets, read_topic, start_worker
from worker.localstack import free_port
from worker.service.attempts import attempts_key
from worker.service.cache import request_key
from worker.service.dead_letter import HEADER_CODE, HEADER_OFFSET, HEADER_REASON
from worker.types import ScanRequest

pytestmark = [pytest.mark.broker, pytest.mark.slow]


class MediaServer:
    """Serves one clip over HTTP: /slow.mp4 only once `release` is set, /hang.mp4 never (until closed)."""

    def __init__(self, clip):
        self.release = threading.Event()
        self.closed = threading.Event()
        body = clip.read_bytes()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                gate = {"/slow.mp4": server.release, "/hang.mp4": server.closed}.get(self.path)
                if gate is not None:
                    gate.wait(600)
                if server.closed.is_set():
                    return
                self.send_response(200)
                self.send_header("Content-Type", "video/mp4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.closed.set()
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def media(varied_clips):
    server = MediaServer(varied_clips[0])
    yield server
    server.close()


def _results(settings):
    return read_topic(settings.kafka_bootstrap, settings.results_topic, idle_s=1.0)


def _wait_until(cond, timeout_s, proc=None, log=None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode}:\n{log.read_text()[-3000:] if log else ''}")
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout_s} s" + (f":\n{log.read_text()[-3000:]}" if log else ""))


def test_kill_9_behind_a_slow_head_redoes_at_most_the_window_and_replays_known_verdicts(
    stack, untrained_bundle, varied_clips, media, procs, tmp_path,
):
    window = 4
    port = free_port()
    settings = stack.settings(
        partitions=1, model_dir=str(untrained_bundle.path), allowed_roots=(str(varied_clips[0].parent),),
        http_allow_private=True, decode_threads=2, max_in_flight=window, http_port=port,
    )
    # the slow download heads the partition and holds its commit; quick answers (missing files) follow
    fast = [ScanRequest(f"fast-{i}", str(varied_clips[0].parent / f"missing-{i}.mp4")) for i in range(12)]
    client = ScanClient(settings)
    ids = client.submit([ScanRequest("slow", f"{media.base}/slow.mp4"), *fast])
    client.close()

    log_a = tmp_path / "a.log"
    first = start_worker(settings, log_a)
    procs.append(first)
    _wait_until(lambda: len(_results(settings)) >= window - 1, 90, first, log_a)
    time.sleep(2.5)  # more than a commit interval: nothing else may be answered while the head is stuck
    before = _results(settings)
    assert len(before) == window - 1, [r.key for r in before]  # the window held: head + 3 answered
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
        assert r.status == 200  # a slow download within its deadlines is healthy
    first.kill()  # the worst moment: answered work that no commit covers
    first.wait()
    assert committed_offsets(settings, 1)[0] in (None, 0)

    media.release.set()
    log_b = tmp_path / "b.log"
    second = start_worker(settings, log_b)
    procs.append(second)
    _wait_until(lambda: {r.key.decode() for r in _results(settings)} >= set(ids), 120, second, log_b)
    second.send_signal(signal.SIGTERM)
    assert second.wait(60) == 0
    records = _results(settings)
    counts = Counter(r.key.decode() for r in records)
    assert set(counts) == set(ids)
    redone = sum(n - 1 for n in counts.values())
    assert redone <= window, counts  # the documented bound: DFD_MAX_IN_FLIGHT per worker
    # the answered ones came back as replays of the same verdict, not scanned again
    first_copy = {r.key: r.value for r in before}
    for r in records[len(before):]:
        if r.key in first_copy:
            assert r.value == first_copy[r.key]
    assert '"event": "verdict_replayed"' in log_b.read_text()
    assert committed_offsets(settings, 1)[0] == len(ids)


def test_message_that_kills_its_worker_every_time_is_dead_lettered_as_poison(
    stack, untrained_bundle, varied_clips, media, procs, tmp_path,
):
    attempts = 3
    settings = stack.settings(
        partitions=1, model_dir=str(untrained_bundle.path), allowed_roots=(str(varied_clips[0].parent),),
        http_allow_private=True, http_read_timeout_s=600.0, http_total_timeout_s=900.0, max_attempts=attempts,
    )
    client = ScanClient(settings)
    ids = client.submit([ScanRequest("hangs", f"{media.base}/hang.mp4"),
                         ScanRequest("after", str(varied_clips[0].parent / "missing.mp4"))])
    client.close()
    store = redis.Redis.from_url(settings.redis_url)
    key = attempts_key(settings.redis_key_prefix, settings.requests_topic, 0, 0)

    for n in range(1, attempts + 1):  # each worker starts the hanging load and is killed in it
        log = tmp_path / f"w{n}.log"
        proc = start_worker(settings, log)
        procs.append(proc)
        _wait_until(lambda n=n: int(store.get(key) or 0) >= n, 90, proc, log)
        if n == 1:
            # the request behind it is answered (its media child starts, finds no file) and its
            # verdict stored, so later workers replay it instead of counting attempts of their own
            _wait_until(lambda: store.exists(request_key(settings.redis_key_prefix, "after")), 90, proc, log)
        time.sleep(0.5)
        proc.kill()
        proc.wait()
        assert committed_offsets(settings, 1)[0] in (None, 0)

    log = tmp_path / "last.log"
    last = start_worker(settings, log)
    procs.append(last)
    letters = []
    _wait_until(lambda: letters.extend(read_topic(settings.kafka_bootstrap, settings.dead_letter_topic, idle_s=0.5)) or letters, 90, last, log)
    [letter] = letters
    assert letter.headers[HEADER_CODE] == b"poison"
    assert f"{attempts} handling attempts".encode() in letter.headers[HEADER_REASON]
    assert letter.headers[HEADER_OFFSET] == b"0" and letter.json()["request_id"] == "hangs"
    _wait_until(lambda: committed_offsets(settings, 1)[0] == len(ids), 30, last, log)  # past it, and on
    # the request behind it was answered by every worker (within the window, never committed
    # before): redone within the bound, as replays of one verdict
    answers = _results(settings)
    assert {r.key.decode() for r in answers} == {"after"} and len({r.value for r in answers}) == 1
    last.send_signal(signal.SIGTERM)
    assert last.wait(60) == 0
