"""Redis writes never hold the caller: a hanging Redis fills the queue, the overflow is dropped and counted."""

import threading
import time

from prometheus_client import REGISTRY

from worker.service.redis_writer import RedisWriter


def test_submit_never_blocks_and_overflow_is_dropped_and_counted():
    release = threading.Event()
    written = []
    writer = RedisWriter(size=2).start()
    dropped = REGISTRY.get_sample_value("dfd_failures_total", {"reason": "cache_write_dropped"}) or 0.0
    writer.submit(lambda: release.wait(10))  # Redis hangs: the thread is stuck on this write
    time.sleep(0.1)
    t0 = time.monotonic()
    accepted = [writer.submit(lambda i=i: written.append(i)) for i in range(5)]
    assert time.monotonic() - t0 < 0.5  # the caller (the publisher) was not held
    assert accepted == [True, True, False, False, False]
    assert REGISTRY.get_sample_value("dfd_failures_total", {"reason": "cache_write_dropped"}) == dropped + 3
    release.set()
    writer.close(timeout_s=5)
    assert written == [0, 1]  # what was queued is written once Redis answers


def test_a_failing_write_does_not_stop_the_others():
    written = []

    def broken():
        raise RuntimeError("bug")

    writer = RedisWriter().start()
    writer.submit(broken)
    writer.submit(lambda: written.append(1))
    writer.close(timeout_s=5)
    assert written == [1] and writer.thread.is_alive() is False
