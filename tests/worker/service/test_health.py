"""Health endpoints over real HTTP: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from worker.service import metrics
from worker.service.health import HealthServer, HealthState


def _get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture
def served():
    state = HealthState(stall_s=60)
    server = HealthServer(state, 0, host="127.0.0.1").start()
    yield state, server.port
    server.stop()


def test_ready_only_with_models_and_broker(served):
    state, port = served
    assert _get(port, "/healthz")[0] == 200
    code, body = _get(port, "/readyz")
    assert code == 503 and "models_loaded=False" in body
    state.models_loaded = True
    state.tick(broker_reachable=False)
    assert _get(port, "/readyz")[0] == 503
    state.tick(broker_reachable=True)
    assert _get(port, "/readyz") == (200, "models_loaded=True broker_reachable=True\n")


def test_stalled_loop_is_not_alive(served):
    state, port = served
    state.models_loaded = True
    state.tick(broker_reachable=True)
    state.last_tick -= 61  # the consume loop has not come round for a minute
    assert _get(port, "/healthz")[0] == 503
    assert _get(port, "/readyz")[0] == 503


def test_metrics_endpoint_serves_the_declared_metrics(served):
    _, port = served
    metrics.MESSAGES_CONSUMED.inc()
    code, body = _get(port, "/metrics")
    assert code == 200
    [value] = [float(line.split()[1]) for line in body.splitlines() if line.startswith("dfd_messages_consumed_total ")]
    assert value >= 1
    for name in ("dfd_in_flight", "dfd_stage_seconds", "dfd_failures_total", "dfd_consumer_lag", "dfd_verdicts_total"):
        assert f"# HELP {name} " in body
    assert _get(port, "/nope")[0] == 404


# -- liveness: every loop heartbeats; a dead or stalled one, or a stuck request, is 503 ----------

import threading  # noqa: E402
import time  # noqa: E402

from tests.worker.service.steps import MODEL, TP, LocalProducer, request, verdict  # noqa: E402
from worker.service.batching import Batcher  # noqa: E402
from worker.service.publishing import Publisher  # noqa: E402
from worker.service.redis_writer import RedisWriter  # noqa: E402
from worker.service.work import Work  # noqa: E402
from worker.types import DecodedVideo, VideoInfo  # noqa: E402


def _eventually_503(port, text, timeout_s=5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        code, body = _get(port, "/healthz")
        if code == 503:
            assert text in body, body
            return
        time.sleep(0.05)
    raise AssertionError(f"/healthz still 200, expected 503 for {text!r}")


@pytest.fixture
def live():
    state = HealthState(stall_s=0.5, handling_limit_s=1.0)
    server = HealthServer(state, 0, host="127.0.0.1").start()
    stop = threading.Event()

    def main_loop():  # the main loop keeps beating, so only the loop under test can fail
        while not stop.is_set():
            state.tick()
            time.sleep(0.05)

    threading.Thread(target=main_loop, daemon=True).start()
    yield state, server.port
    stop.set()
    server.stop()


def _work():
    w = Work(TP("req", 0), 0, b"k", b"{}")
    w.request = request()
    return w


def _video(w):
    return DecodedVideo(w.request, [], VideoInfo())


class _Blocking:
    info = MODEL

    def __init__(self, how):
        self.how = how

    def analyze(self, videos):
        if self.how == "die":
            raise SystemExit  # the thread ends, as a crash in a C extension or a bug would end it
        time.sleep(30)  # stuck in a native call
        return []


def test_main_loop_stalled_is_503(served):
    state, port = served
    state.stall_s = 0.3
    time.sleep(0.4)
    _eventually_503(port, "main loop stalled")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the loop is killed on purpose
@pytest.mark.parametrize("how, text", [("die", "batcher loop is dead"), ("stall", "batcher loop stalled")])
def test_batcher_dead_or_stalled_is_503(live, how, text):
    state, port = live
    batcher = Batcher(_Blocking(how), max_frames=8, max_wait_s=0.0, answer=lambda w, v: None, health=state).start()
    assert _get(port, "/healthz")[0] == 200
    w = _work()
    batcher.submit(w, _video(w))
    _eventually_503(port, text)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the loop is killed on purpose
def test_publisher_dead_is_503(live):
    state, port = live

    def done(_work):
        raise SystemExit

    Publisher(LocalProducer(), results_topic="res", dead_letter_topic="dlq", model_info=MODEL, backoff_s=0.01,
              on_published=lambda w: None, on_done=done, health=state).start().publish(_work(), verdict())
    _eventually_503(port, "publisher loop is dead")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the loop is killed on purpose
@pytest.mark.parametrize("how, text", [("die", "redis_writer loop is dead"), ("stall", "redis_writer loop stalled")])
def test_redis_writer_dead_or_stalled_is_503(live, how, text):
    state, port = live
    writer = RedisWriter(state).start()
    assert _get(port, "/healthz")[0] == 200

    def write():
        if how == "die":
            raise SystemExit
        time.sleep(30)  # a Redis that never answers, without socket timeouts

    writer.submit(write)
    _eventually_503(port, text)


def test_request_stuck_in_handling_past_its_deadlines_is_503(live):
    state, port = live
    started = {"at": None}
    state.watch_handling(lambda: started["at"])
    assert _get(port, "/healthz")[0] == 200
    started["at"] = time.monotonic()  # all load threads stuck on one request
    time.sleep(0.3)
    assert _get(port, "/healthz")[0] == 200  # within its deadlines
    _eventually_503(port, "in handling")
    started["at"] = None
    assert _get(port, "/healthz")[0] == 200


def test_handling_limit_is_the_decode_and_download_deadlines_plus_a_margin():
    from worker.service.runner import handling_limit_s
    from worker.settings import Settings

    assert handling_limit_s(Settings()) == 480.0  # the figure docs/streaming.md gives for the defaults
    assert handling_limit_s(Settings(decode_timeout_s=10, http_total_timeout_s=20)) == 150.0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Loop:
    """Stands in for the worker's or materializer's main loop: runs until stopped, probing /healthz."""

    def __init__(self, port):
        import threading

        self.port, self.stopped, self.seen = port, threading.Event(), None

    def run(self):
        self.seen = _get(self.port, "/healthz")[0]
        self.stopped.wait(10)

    def stop(self):
        self.stopped.set()


def test_serve_until_signal_runs_until_sigterm_then_stops_serving():
    import os
    import signal
    import threading

    from worker.service.health import serve_until_signal

    port, loops = _free_port(), []
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
    try:
        code = serve_until_signal(port, lambda health: loops.append(_Loop(port)) or loops[0])
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
    assert code == 0 and loops[0].stopped.is_set() and loops[0].seen == 200
    with pytest.raises(OSError):  # the endpoints went down with the loop
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_serve_until_signal_build_failure_is_exit_code_4():
    from worker.service.health import serve_until_signal

    def build(health):
        raise FileNotFoundError("no model.onnx")

    assert serve_until_signal(_free_port(), build) == 4
