"""HTTP endpoints for the orchestrator: /healthz (alive), /readyz (models loaded, broker reachable), /metrics.

The consume loop reports into a `HealthState`; the server only reads it, so a stuck loop
shows up as not alive once its heartbeat is older than `stall_s`.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from worker.service import metrics


class HealthState:
    """What the runner knows about itself, updated from the consume loop."""

    def __init__(self, stall_s: float = 120.0):
        self.stall_s = stall_s
        self.models_loaded = False
        self.broker_reachable = False
        self.last_tick = time.monotonic()
        self._lock = threading.Lock()

    def tick(self, broker_reachable: bool | None = None) -> None:
        with self._lock:
            self.last_tick = time.monotonic()
            if broker_reachable is not None:
                self.broker_reachable = broker_reachable
        metrics.READY.set(1 if self.ready() else 0)

    def alive(self) -> bool:
        return time.monotonic() - self.last_tick < self.stall_s

    def ready(self) -> bool:
        return self.models_loaded and self.broker_reachable and self.alive()


def _handler(state: HealthState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                ok = state.alive()
                self._reply(200 if ok else 503, b"ok\n" if ok else b"stalled\n", "text/plain")
            elif path == "/readyz":
                ok = state.ready()
                body = f"models_loaded={state.models_loaded} broker_reachable={state.broker_reachable}\n".encode()
                self._reply(200 if ok else 503, body, "text/plain")
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
