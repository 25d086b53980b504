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
