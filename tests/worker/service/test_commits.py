"""The commit path without a broker: the window counts uncommitted work, commits are ordered and
never move an offset backwards, also when the main loop and the revoke drain commit at once."""

import random
import threading
import time

from kafka.net.selector import NetworkSelector

from worker.service.client_loop import loop_sleep
from worker.service.commits import CommitPath


class LocalConsumer:
    """Records commits like a group coordinator would, and checks they only go forward."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False):
        self.delay_s = delay_s
        self.fail = fail
        self.log: list[tuple[str, object, int]] = []
        self.committed: dict = {}
        self.backwards: list = []
        self._busy = threading.Lock()
        self.overlapped = False

    def _apply(self, how, offsets):
        for tp, meta in offsets.items():
            if meta.offset < self.committed.get(tp, -1):
                self.backwards.append((tp, meta.offset))
            self.committed[tp] = meta.offset
            self.log.append((how, tp, meta.offset))

    def commit(self, offsets):
        if not self._busy.acquire(blocking=False):
            self.overlapped = True
            self._busy.acquire()
        try:
            time.sleep(self.delay_s)
            if self.fail:
                raise RuntimeError("CommitFailedError: rebalance in progress")
            self._apply("sync", offsets)
        finally:
            self._busy.release()

    async def commit_async(self, offsets):
        if not self._busy.acquire(blocking=False):
            self.overlapped = True
            self._busy.acquire()
        try:
            await loop_sleep(self.delay_s)
            self._apply("async", offsets)
        finally:
            self._busy.release()


def test_window_counts_finished_but_uncommitted_work():
    path = CommitPath(LocalConsumer(), window=4)
    for off in range(4):
        path.add("p", off)
    for off in (1, 2, 3):
        path.done("p", off)  # the head (0) is slow, the rest finished
    assert path.pending() == 1
    assert path.room() == 0  # finished work still counts: a crash would redo it
    path.done("p", 0)
    assert path.room() == 0 and path.due()  # full and committable: commit now, not in a second
    assert path.commit()
    assert path.room() == 4 and path.last_committed("p") == 4


def test_full_window_with_a_slow_head_has_nothing_to_commit():
    consumer = LocalConsumer()
    path = CommitPath(consumer, window=3)
    path.commit()  # start the interval
    for off in range(3):
        path.add("p", off)
    path.done("p", 2)
    path.done("p", 1)
    assert path.room() == 0
    assert path.commit() and consumer.log == [("sync", "p", 0)]  # the start position, still safe
    assert not path.due()  # nothing past the head to commit, and the interval has not run out
    assert path.commit() and consumer.log == [("sync", "p", 0)]  # not sent again


def test_failed_commit_is_counted_and_progress_kept_for_the_next():
    consumer = LocalConsumer(fail=True)
    path = CommitPath(consumer, window=8)
    path.add("p", 0)
    path.done("p", 0)
    assert path.commit() is False
    assert path.uncommitted() == 1
    consumer.fail = False
    assert path.commit() and consumer.committed == {"p": 1}
    assert path.uncommitted() == 0


def test_forgotten_partition_is_not_committed_and_its_mark_is_reset():
    consumer = LocalConsumer()
    path = CommitPath(consumer, window=8)
    path.add("p", 5)
    path.done("p", 5)
    path.commit()
    assert path.last_committed("p") == 6
    path.add("p", 6)
    assert path.forget(["p"]) == 1
    assert path.last_committed("p") is None and path.uncommitted() == 0
    # taken back later from another owner who went further: its offsets are accepted afresh
    path.add("p", 40)
    path.done("p", 40)
    path.commit()
    assert consumer.committed == {"p": 41}


def test_main_loop_and_revoke_drain_commit_one_at_a_time_and_never_backwards():
    consumer = LocalConsumer(delay_s=0.002)
    path = CommitPath(consumer, window=10_000)
    loop = NetworkSelector()
    loop.start()
    rng = random.Random(3)
    parts = ["a", "b"]
    offsets = {p: list(range(400)) for p in parts}
    for p in parts:
        for off in offsets[p]:
            path.add(p, off)
    stop = threading.Event()

    def finish_randomly():
        order = [(p, o) for p in parts for o in offsets[p]]
        rng.shuffle(order)
        for p, o in order:
            path.done(p, o)
            if rng.random() < 0.3:
                time.sleep(0.001)
        stop.set()

    def main_loop():
        while not stop.is_set():
            path.commit()
            time.sleep(0.003)
        path.commit()

    async def revoke_drains():
        while not stop.is_set():
            await path.commit_async(parts)
            await loop_sleep(0.001)
        await path.commit_async(parts)

    threads = [threading.Thread(target=finish_randomly), threading.Thread(target=main_loop),
               threading.Thread(target=loop.run, args=(revoke_drains,))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        loop.stop(timeout_ms=2000)
    assert {how for how, _, _ in consumer.log} == {"sync", "async"}  # both paths committed
    assert not consumer.overlapped  # never two commits in flight at once
    assert consumer.backwards == []
    for p in parts:
        sent = [off for _, tp, off in consumer.log if tp == p]
        assert sent == sorted(set(sent))  # strictly increasing: no offset sent twice
    assert consumer.committed == {"a": 400, "b": 400}
