"""HTTP endpoints for the orchestrator: /healthz (alive), /readyz (models loaded, broker reachable), /metrics.

The worker reports into a `HealthState`; the server only reads it. Alive means:
- every long-running loop (main poll loop, batcher, publisher, Redis writer) has beaten its
  heart within `stall_s` and its thread is still running;
- no request has been in handling (load and analysis) for longer than its deadlines allow
  (`handling_limit_s`: decode timeout + HTTP total timeout + an analysis margin), which catches
  a load pool whose threads are all stuck.
Ready means alive, models loaded, the broker reachable and no publish failing for long.
"""

from __future__ import annotations

import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Protocol

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from worker.service import metrics

MAIN_LOOP = "main"


class HealthState:
    """What the worker knows about itself: heartbeats per loop, readiness conditions."""

    def __init__(self, stall_s: float = 120.0, handling_limit_s: float = float("inf")):
        self.stall_s = stall_s
        self.handling_limit_s = handling_limit_s
        self.models_loaded = False
        self.broker_reachable = False
        self.publishing = True  # False while a verdict has failed to publish for long
        self.last_tick = time.monotonic()  # the main loop's heartbeat
        self._beats: dict[str, float] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._oldest_handling: Callable[[], float | None] = lambda: None
        self._lock = threading.Lock()

    # -- reporting -----------------------------------------------------------------------
    def tick(self, broker_reachable: bool | None = None) -> None:
        """The main loop's heartbeat, with what it learned about the broker."""
        with self._lock:
            self.last_tick = time.monotonic()
            if broker_reachable is not None:
                self.broker_reachable = broker_reachable
        metrics.READY.set(1 if self.ready() else 0)

    def watch(self, name: str, thread: threading.Thread | None = None) -> None:
        """Follow a loop from now on: it must `beat(name)` at least every stall_s."""
        with self._lock:
            self._beats[name] = time.monotonic()
            if thread is not None:
                self._threads[name] = thread

    def beat(self, name: str) -> None:
        with self._lock:
            self._beats[name] = time.monotonic()

    def watch_handling(self, oldest_started: Callable[[], float | None]) -> None:
        """`oldest_started()`: the monotonic start time of the oldest request in handling, or None."""
        self._oldest_handling = oldest_started

    # -- reading -------------------------------------------------------------------------
    def problems(self) -> list[str]:
        now = time.monotonic()
        out = []
        with self._lock:
            beats = {MAIN_LOOP: self.last_tick, **self._beats}
            threads = dict(self._threads)
        for name, at in beats.items():
            if now - at >= self.stall_s:
                out.append(f"{name} loop stalled for {now - at:.0f} s")
        for name, thread in threads.items():
            if not thread.is_alive():
                out.append(f"{name} loop is dead")
        started = self._oldest_handling()
        if started is not None and now - started > self.handling_limit_s:
            out.append(f"a request has been in handling for {now - started:.0f} s (limit {self.handling_limit_s:.0f} s)")
        return out

    def alive(self) -> bool:
        return not self.problems()

    def ready(self) -> bool:
        return self.models_loaded and self.broker_reachable and self.publishing and self.alive()


def _handler(state: HealthState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                problems = state.problems()
                body = ("\n".join(problems) + "\n").encode() if problems else b"ok\n"
                self._reply(503 if problems else 200, body, "text/plain")
            elif path == "/readyz":
                ok = state.ready()
                body = f"models_loaded={state.models_loaded} broker_reachable={state.broker_reachable}"
                if not state.publishing:
                    body += " publishing=False"
                self._reply(200 if ok else 503, (body + "\n").encode(), "text/plain")
            elif path == "/metrics":
                self._reply(200, generate_latest(), CONTENT_TYPE_LATEST)
            else:
                self._reply(404, b"not found\n", "text/plain")

        def _reply(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # probes every few seconds would flood the logs
            pass

    return Handler


class HealthServer:
    """Serves the endpoints from a daemon thread; port 0 in settings means disabled (not started)."""

    def __init__(self, state: HealthState, port: int, host: str = "0.0.0.0"):
        self.httpd = ThreadingHTTPServer((host, port), _handler(state))
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="health-http", daemon=True)

    def start(self) -> "HealthServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Loop(Protocol):
    def run(self) -> None: ...
    def stop(self) -> None: ...


def serve_until_signal(port: int, build: Callable[[HealthState], Loop], *, build_failed_code: int = 4) -> int:
    """The process shell shared by the worker and the materializer: health endpoints up first (so a
    pod that cannot load its models still answers /healthz and is seen as not ready), then `build`,
    then run until SIGTERM/SIGINT asks the loop to stop. Returns the exit code."""
    log = structlog.get_logger()
    health = HealthState()
    server = HealthServer(health, port).start() if port else None
    if server:
        log.info("health_endpoints", port=server.port)
    try:
        try:
            loop = build(health)
        except Exception as exc:
            log.error("models_not_loaded", error=str(exc))
            return build_failed_code

        def on_signal(signum, _frame):
            log.info("signal_received", signal=signal.Signals(signum).name)
            loop.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        loop.run()
        return 0
    finally:
        if server:
            server.stop()
