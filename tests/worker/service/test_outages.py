"""Outages of Redis and of the broker while the worker runs: verdicts keep flowing, the worker recovers alone."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from prometheus_client import REGISTRY

from producer.client import ScanClient
from tests.fixtures.stack import read_topic
from worker.localstack import create_topics, free_port, start_broker, start_redis, stop_process
from worker.pipeline.scanner import Scanner
from worker.service.runner import Runner
from worker.types import ScanRequest

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def _answered(settings):
    return {r.key.decode() for r in read_topic(settings.kafka_bootstrap, settings.results_topic, idle_s=1.0)}


def _wait_answered(settings, ids, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = _answered(settings)
        if set(ids) <= got:
            return got
        time.sleep(0.5)
    return _answered(settings)


def _run_in_thread(settings):
    runner = Runner(settings, Scanner(settings))
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    return runner, thread


def test_redis_down_mid_run_verdicts_keep_flowing_to_kafka(stack, untrained_bundle, varied_clips, tmp_path):
    port = free_port()
    redis_proc = start_redis(port, tmp_path / "redis.log")
    settings = stack.settings(
        model_dir=str(untrained_bundle.path), allowed_roots=(str(varied_clips[0].parent),),
        redis_url=f"redis://127.0.0.1:{port}/0",
    )
    client = ScanClient(settings)
    runner, thread = _run_in_thread(settings)
    try:
        before = list(client.wait(client.submit([str(c) for c in varied_clips[:3]]), timeout_s=60))
        assert len(before) == 3  # read back from Redis: it works while up

        stop_process(redis_proc.pid)
        failures = REGISTRY.get_sample_value("dfd_failures_total", {"reason": "cache_write"}) or 0.0
        during = client.submit([str(c) for c in varied_clips[3:9]])
        assert set(during) <= _wait_answered(settings, during, 90)
        assert thread.is_alive()
        assert REGISTRY.get_sample_value("dfd_failures_total", {"reason": "cache_write"}) >= failures + len(during)

        # Redis back on the same port: the worker reconnects by itself
        redis_proc = start_redis(port, tmp_path / "redis2.log")
        time.sleep(2.5)  # past the cache's outage back-off
        after = client.submit([str(c) for c in varied_clips[9:11]])
        assert {v.request_id for v in client.wait(after, timeout_s=60)} == set(after)
    finally:
        runner.stop()
        thread.join(30)
        stop_process(redis_proc.pid)
    assert not thread.is_alive()


def test_broker_frozen_30s_then_resumed_worker_recovers(stack, untrained_bundle, varied_clips, tmp_path):
    port = free_port()
    broker = start_broker(port, tmp_path / "tansu.log")
    bootstrap = f"127.0.0.1:{port}"
    settings = stack.settings(
        model_dir=str(untrained_bundle.path), allowed_roots=(str(varied_clips[0].parent),),
        kafka_bootstrap=stack.bootstrap,
    ).replace(kafka_bootstrap=bootstrap)
    create_topics(bootstrap, {settings.requests_topic: 4, settings.results_topic: 2, settings.dead_letter_topic: 1})
    client = ScanClient(settings)
    runner, thread = _run_in_thread(settings)
    try:
        first = client.submit([ScanRequest(f"f-{i}", str(c)) for i, c in enumerate(varied_clips[:12])])
        # freeze the broker while that work is in flight
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(_answered(settings)) < 2:
            time.sleep(0.2)
        deadline = time.monotonic() + 15  # readiness is re-evaluated every few seconds
        while time.monotonic() < deadline and not runner.health.ready():
            time.sleep(0.2)
        assert runner.health.ready()
        os.kill(broker.pid, signal.SIGSTOP)
        time.sleep(30)
        # no heartbeat answered for longer than the session timeout: not ready
        assert not runner.health.ready() and not runner.health.broker_reachable
        assert runner.health.alive()  # but alive: the loop keeps turning, restarting would not help
        os.kill(broker.pid, signal.SIGCONT)
        assert set(first) <= _wait_answered(settings, first, 120), "work in flight during the freeze was lost"
        # and it consumes new work again
        more = client.submit([ScanRequest(f"m-{i}", str(c)) for i, c in enumerate(varied_clips[12:16])])
        assert set(more) <= _wait_answered(settings, more, 90)
        assert thread.is_alive()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not runner.health.ready():
            time.sleep(0.5)
        assert runner.health.ready()
    finally:
        runner.stop()
        thread.join(60)
        client.close()
        stop_process(broker.pid)
    assert not thread.is_alive()
