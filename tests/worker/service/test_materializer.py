"""The materializer (`dfd-worker materialize`): Redis converges to the results topic across a
Redis outage and a crash between a Redis write and its commit, and never commits past an
unwritten verdict. Real broker, real redis-server processes of the test's own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client import REGISTRY

from producer.client import ScanClient
from tests.fixtures.stack import REPO, read_topic
from worker.localstack import free_port, settings_env, start_redis, stop_process
from worker.service.cache import VerdictCache
from worker.service.materializer import Materializer
from worker.service.messages import encode_verdict
from worker.settings import Settings
from worker.types import ModelInfo, Verdict

pytestmark = [pytest.mark.broker]

MODEL = ModelInfo("m", "1", "ab" * 32)


def _verdict(request_id: str) -> Verdict:
    return Verdict(request_id, f"file:///v/{request_id}.mp4", "real", score=0.25, model=MODEL, content_sha256=os.urandom(32).hex())


def _produce(settings: Settings, values: list[tuple[bytes, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    try:
        for key, value in values:
            producer.send(settings.results_topic, key=key, value=value)
        producer.flush(30)
    finally:
        producer.close()


def _produce_verdicts(settings: Settings, ids: list[str]) -> None:
    _produce(settings, [(rid.encode(), encode_verdict(_verdict(rid))) for rid in ids])


def _committed(settings: Settings) -> dict[int, int]:
    """The materializer group's committed offsets on the results topic (partitions with one), read without joining it."""
    probe = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=settings.materializer_group_id, enable_auto_commit=False)
    try:
        parts = sorted(probe.partitions_for_topic(settings.results_topic) or ())
        committed = {p: probe.committed(TopicPartition(settings.results_topic, p)) for p in parts}
        return {p: off for p, off in committed.items() if off is not None}
    finally:
        probe.close()


def _ends(settings: Settings) -> dict[int, int]:
    """Offset after the last record of each partition of the results topic (read back, not ListOffsets)."""
    ends: dict[int, int] = {}
    for r in read_topic(settings.kafka_bootstrap, settings.results_topic, idle_s=1.0):
        ends[r.partition] = max(ends.get(r.partition, 0), r.offset + 1)
    return ends


def _missing(settings: Settings, ids: list[str]) -> list[str]:
    cache = VerdictCache.from_settings(settings)
    return [rid for rid in ids if cache.get(rid) is None]


def _wait_written(settings: Settings, ids: list[str], timeout_s: float) -> list[str]:
    deadline = time.monotonic() + timeout_s
    missing = _missing(settings, ids)
    while missing and time.monotonic() < deadline:
        time.sleep(0.5)
        missing = _missing(settings, missing)
    return missing


def _start(settings: Settings, log_path: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFD_")}
    env.update(settings_env(settings))
    env["PYTHONPATH"] = str(REPO)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "materialize"], env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=REPO,
        )


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_redis_down_60s_then_every_verdict_reaches_redis_and_nothing_is_committed_past_an_unwritten_one(stack, tmp_path):
    port = free_port()
    redis_dir = tmp_path / "redis"
    redis_proc = start_redis(port, redis_dir / "redis.log")  # our own: the session Redis stays up
    http_port = free_port()
    settings = stack.settings(
        redis_url=f"redis://127.0.0.1:{port}/0", http_port=http_port, materializer_commit_interval_s=0.2,
    )
    proc = _start(settings, tmp_path / "materializer.log")
    before = [f"before-{i}" for i in range(100)]
    during = [f"during-{i}" for i in range(120)]
    try:
        _produce_verdicts(settings, before)
        assert _wait_written(settings, before, 60) == []
        time.sleep(1.0)  # a commit interval, so the commit covers them
        ends_before = _ends(settings)
        assert _committed(settings) == ends_before

        # Redis goes away (saving to disk as it stops, like a failover keeps data), for 60 s
        redis.Redis(port=port).shutdown(save=True)
        redis_proc.wait(10)
        outage_end = time.monotonic() + 60
        for chunk in range(6):  # verdicts keep arriving on the topic during the outage
            _produce_verdicts(settings, during[chunk * 20 : (chunk + 1) * 20])
            time.sleep(max(0.0, outage_end - time.monotonic() - (5 - chunk) * 10))
            committed = _committed(settings)
            # nothing committed past an unwritten verdict: not one offset beyond the pre-outage ends
            assert all(committed[p] <= ends_before.get(p, 0) for p in committed), (committed, ends_before)
            code, body = _get(http_port, "/healthz")
            assert code == 200, "the materializer must stay alive while it waits for Redis"
            assert proc.poll() is None
        assert _metric(_get(http_port, "/metrics")[1], "dfd_materializer_paused") == 1.0

        redis_proc = start_redis(port, redis_dir / "redis.log")  # back, with the saved data
        assert _missing(settings, before[:5]) == []
        assert _wait_written(settings, before + during, 60) == []
        with ScanClient(settings) as client:
            assert all(client.get(rid) is not None for rid in during)
        ends = _ends(settings)
        deadline = time.monotonic() + 10
        while _committed(settings) != ends and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _committed(settings) == ends
        assert _metric(_get(http_port, "/metrics")[1], "dfd_materializer_paused") == 0.0
    finally:
        _stop(proc)
        stop_process(redis_proc.pid)
    assert proc.returncode == 0


@pytest.mark.slow
def test_kill_9_between_redis_write_and_commit_then_restart_completes(stack, tmp_path):
    http_port = free_port()
    # commits an hour apart: every write the first process makes stays uncommitted
    settings = stack.settings(http_port=http_port, materializer_commit_interval_s=3600)
    first = [f"first-{i}" for i in range(60)]
    second = [f"second-{i}" for i in range(40)]
    proc = _start(settings, tmp_path / "materializer-1.log")
    try:
        _produce_verdicts(settings, first)
        assert _wait_written(settings, first, 60) == []
        assert _committed(settings) == {}  # written, not committed
    finally:
        proc.kill()  # SIGKILL: no drain, no commit
        proc.wait()

    _produce_verdicts(settings, second)  # more arrive while it is down
    restarted = _start(settings.replace(materializer_commit_interval_s=0.2), tmp_path / "materializer-2.log")
    try:
        assert _wait_written(settings, first + second, 60) == []
        ends = _ends(settings)
        deadline = time.monotonic() + 20
        while _committed(settings) != ends and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _committed(settings) == ends
        # the uncommitted verdicts were redelivered and written again (idempotent), not skipped
        assert _metric(_get(http_port, "/metrics")[1], "dfd_materialized_total") >= len(first) + len(second)
    finally:
        _stop(restarted)
    assert restarted.returncode == 0


def test_records_that_are_not_verdicts_are_skipped_and_the_rest_written(stack):
    settings = stack.settings(materializer_commit_interval_s=0.0)
    _produce(settings, [(b"junk-1", b"\xff\x00not json"), (b"junk-2", b'{"schema_version": 1}')])
    _produce_verdicts(settings, ["after-junk"])
    skipped = REGISTRY.get_sample_value("dfd_materializer_skipped_total", {"reason": "unreadable"}) or 0.0
    materializer = Materializer(settings)
    thread = threading.Thread(target=materializer.run, daemon=True)
    thread.start()
    try:
        assert _wait_written(settings, ["after-junk"], 60) == []
        ends = _ends(settings)
        deadline = time.monotonic() + 10
        while _committed(settings) != ends and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _committed(settings) == ends
        assert REGISTRY.get_sample_value("dfd_materializer_skipped_total", {"reason": "unreadable"}) == skipped + 2
    finally:
        materializer.stop()
        thread.join(30)
    assert not thread.is_alive()
