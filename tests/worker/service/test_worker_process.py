"""`dfd-worker run` as real processes against the broker: kill -9 and restart, two replicas, SIGTERM drain."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter

import pytest

from producer.client import ScanClient
from tests.fixtures.stack import committed_offsets, read_topic, start_worker, wait_for_log
from worker.types import ScanRequest

pytestmark = [pytest.mark.broker, pytest.mark.slow]

PARTITIONS = 4


@pytest.fixture
def settings(stack, untrained_bundle, varied_clips):
    return stack.settings(
        partitions=PARTITIONS,
        model_dir=str(untrained_bundle.path),
        allowed_roots=(str(varied_clips[0].parent),),
        decode_threads=1,
        max_in_flight=4,
    )


def _submit(settings, clips, tag):
    client = ScanClient(settings)
    ids = client.submit([ScanRequest(f"{tag}-{i}", str(c)) for i, c in enumerate(clips)])
    client.close()
    return ids


def _positions(settings, n):
    """(partition, offset) -> request id, read back from the requests topic."""
    return {
        (r.partition, r.offset): r.json()["request_id"]
        for r in read_topic(settings.kafka_bootstrap, settings.requests_topic, count=n, timeout_s=20)
    }


def _answered(settings):
    return [r.key.decode() for r in read_topic(settings.kafka_bootstrap, settings.results_topic, idle_s=1.0)]


def _assert_commits_cover_only_answered_work(settings, positions, answered):
    committed = committed_offsets(settings, PARTITIONS)
    for (partition, offset), rid in positions.items():
        c = committed[partition]
        if c is not None and offset < c:
            assert rid in answered, f"offset {offset} of partition {partition} committed without a verdict for {rid}"
    return committed


def test_kill_9_mid_run_then_another_worker_answers_everything(settings, procs, varied_clips, tmp_path):
    ids = _submit(settings, varied_clips, "k9")
    positions = _positions(settings, len(ids))
    first = start_worker(settings, tmp_path / "a.log")
    procs.append(first)
    # let it get some work done and commit some of it, then kill it without warning
    wait_for_log(tmp_path / "a.log", '"event": "verdict"', timeout_s=90, count=4, proc=first)
    time.sleep(1.2)  # past one commit interval
    first.kill()
    first.wait()
    answered = set(_answered(settings))
    assert 0 < len(answered) < len(ids), "the kill should land mid-run"
    committed = _assert_commits_cover_only_answered_work(settings, positions, answered)
    assert any(committed.values()), "some progress should have been committed before the kill"

    second = start_worker(settings, tmp_path / "b.log")
    procs.append(second)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not set(ids) <= set(_answered(settings)):
        assert second.poll() is None, (tmp_path / "b.log").read_text()[-3000:]
        time.sleep(1)
    final = _answered(settings)
    assert set(final) == set(ids)  # nothing lost; duplicates of work in flight at the kill are allowed
    # only what the commit did not cover at the kill is redone: committed work never twice
    uncommitted = {rid for (p, o), rid in positions.items() if committed[p] is None or o >= committed[p]}
    duplicated = {rid for rid, n in Counter(final).items() if n > 1}
    assert duplicated <= uncommitted
    second.send_signal(signal.SIGTERM)
    assert second.wait(60) == 0
    assert committed_offsets(settings, PARTITIONS) == {p: sum(1 for (q, _) in positions if q == p) for p in range(PARTITIONS)}


def test_two_workers_in_one_group_split_the_partitions(settings, procs, varied_clips, tmp_path):
    logs = [tmp_path / "w0.log", tmp_path / "w1.log"]
    for log in logs:
        procs.append(start_worker(settings, log))
    for log, proc in zip(logs, procs):
        wait_for_log(log, '"event": "partitions_assigned"', timeout_s=60, proc=proc)
    ids = _submit(settings, varied_clips[:16], "two")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not set(ids) <= set(_answered(settings)):
        time.sleep(1)
    assert set(_answered(settings)) == set(ids)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    assert [p.wait(60) for p in procs] == [0, 0]

    def final_assignment(log):
        # the whole assignment after the last change (the cooperative assignor adds and revokes
        # partitions incrementally)
        events = [json.loads(line) for line in log.read_text().splitlines()
                  if '"partitions_assigned"' in line or '"partitions_revoked"' in line]
        return set(events[-1]["owned"])

    a, b = (final_assignment(log) for log in logs)
    assert a and b and not (a & b) and a | b == set(range(PARTITIONS))
    # both did real work
    for log in logs:
        assert '"event": "verdict"' in log.read_text()


def test_sigterm_drains_in_flight_work_and_commits(settings, procs, varied_clips, tmp_path):
    ids = _submit(settings, varied_clips, "term")
    positions = _positions(settings, len(ids))
    log = tmp_path / "w.log"
    worker = start_worker(settings, log)
    procs.append(worker)
    wait_for_log(log, '"event": "verdict"', timeout_s=90, count=3, proc=worker)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0
    text = log.read_text()
    assert '"event": "draining"' in text and '"abandoned": 0' in text
    answered = set(_answered(settings))
    assert len(answered) < len(ids), "SIGTERM should land mid-run"
    committed = _assert_commits_cover_only_answered_work(settings, positions, answered)
    # and everything it answered is committed: a restart redoes nothing
    for (partition, offset), rid in positions.items():
        if rid in answered:
            assert committed[partition] is not None and offset < committed[partition]


def test_worker_joining_mid_run_triggers_a_drained_rebalance_without_loss(settings, procs, varied_clips, tmp_path):
    ids = _submit(settings, varied_clips, "join")
    positions = _positions(settings, len(ids))
    first = start_worker(settings, tmp_path / "a.log")
    procs.append(first)
    wait_for_log(tmp_path / "a.log", '"event": "verdict"', timeout_s=90, count=3, proc=first)
    second = start_worker(settings, tmp_path / "b.log")
    procs.append(second)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not set(ids) <= set(_answered(settings)):
        time.sleep(1)
    answered = _answered(settings)
    assert set(answered) == set(ids)
    # the first worker gave up partitions, after draining their in-flight work if they had any
    # (the cooperative assignor revokes only the partitions that move, maybe idle ones); the
    # work may all be answered while that rebalance is still under way, so wait for it
    wait_for_log(tmp_path / "a.log", '"event": "partitions_revoked"', timeout_s=60, proc=first)
    first_log = (tmp_path / "a.log").read_text()
    if '"reason": "rebalance"' in first_log:
        assert '"event": "drained"' in first_log and '"abandoned": 0' in first_log
    assert '"drain_incomplete"' not in first_log
    assert '"commit_failed"' not in first_log  # progress committed before letting go
    assert len(answered) == len(ids)  # a clean drain redoes nothing
    for p in procs:
        p.send_signal(signal.SIGTERM)
    assert [p.wait(60) for p in procs] == [0, 0]
    assert committed_offsets(settings, PARTITIONS) == {p: sum(1 for (q, _) in positions if q == p) for p in range(PARTITIONS)}


def test_media_children_are_running_before_the_first_request(settings, procs, tmp_path):
    """A restarted worker spawns its decoder children at start, not on its first requests."""
    log_path = tmp_path / "w.log"
    worker = start_worker(settings.replace(decode_threads=2), log_path)
    procs.append(worker)
    wait_for_log(log_path, '"event": "worker_started"', timeout_s=90, proc=worker)
    (line,) = [json.loads(x) for x in log_path.read_text().splitlines() if '"media_children_started"' in x]
    assert len(line["pids"]) == 2 and worker.pid not in line["pids"]
    for pid in line["pids"]:
        with open(f"/proc/{pid}/status") as f:  # alive (not a zombie) while no request has come
            assert "\nState:\tZ" not in f.read()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0
