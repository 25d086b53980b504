"""The offset tracker never lets a commit pass unfinished work."""

import random

import pytest

from worker.service.offsets import OffsetTracker


def test_nothing_committable_before_anything_arrives():
    t = OffsetTracker()
    assert t.committable("p0") is None
    assert t.to_commit() == {}


def test_commit_stops_at_oldest_pending_offset():
    t = OffsetTracker()
    for off in (10, 11, 12, 13):
        t.add("p0", off)
    assert t.committable("p0") == 10  # nothing done yet: the start position, still safe
    t.done("p0", 12)
    t.done("p0", 13)
    assert t.committable("p0") == 10  # 10 and 11 still running
    t.done("p0", 10)
    assert t.committable("p0") == 11
    t.done("p0", 11)
    assert t.committable("p0") == 14  # all done: commit one past the last


def test_gaps_in_offsets_do_not_block_commits():
    # compacted topics and transaction markers leave holes in the offset sequence
    t = OffsetTracker()
    for off in (3, 7, 20):
        t.add("p", off)
    t.done("p", 3)
    t.done("p", 20)
    assert t.committable("p") == 7
    t.done("p", 7)
    assert t.committable("p") == 21


def test_partitions_are_independent():
    t = OffsetTracker()
    t.add("a", 0)
    t.add("b", 0)
    t.add("b", 1)
    t.done("b", 0)
    t.done("b", 1)
    assert t.to_commit() == {"a": 0, "b": 2}
    assert t.pending() == 1 and t.pending("a") == 1 and t.pending("b") == 0


def test_committed_offset_is_not_offered_again():
    t = OffsetTracker()
    t.add("p", 5)
    t.done("p", 5)
    assert t.to_commit() == {"p": 6}
    t.committed("p", 6)
    assert t.to_commit() == {}
    t.add("p", 6)
    assert t.to_commit() == {}  # 6 pending: committing 6 again would be a no-op
    t.done("p", 6)
    assert t.to_commit() == {"p": 7}


def test_done_for_unknown_or_revoked_work_is_ignored():
    t = OffsetTracker()
    t.add("p", 1)
    assert t.done("p", 99) is False
    assert t.done("q", 1) is False
    assert t.forget("p") == 1
    assert t.done("p", 1) is False
    assert t.to_commit() == {}


def test_offsets_must_increase():
    t = OffsetTracker()
    t.add("p", 4)
    with pytest.raises(ValueError):
        t.add("p", 4)
    with pytest.raises(ValueError):
        t.add("p", 2)


def test_random_completion_order_never_commits_past_unfinished_work():
    rng = random.Random(7)
    t = OffsetTracker()
    offsets = sorted(rng.sample(range(1000), 200))
    for off in offsets:
        t.add("p", off)
    unfinished = set(offsets)
    for off in rng.sample(offsets, len(offsets)):
        t.done("p", off)
        unfinished.discard(off)
        target = t.committable("p")
        if target is not None:
            # everything below the commit point is finished
            assert all(u >= target for u in unfinished)
            # and it is as far as it can go
            assert target == (min(unfinished) if unfinished else offsets[-1] + 1)
            t.committed("p", target)
    assert t.pending() == 0


def test_done_work_stays_uncommitted_until_a_commit_covers_it():
    # a crash redoes everything not covered by a commit, finished or not: the window counts it
    t = OffsetTracker()
    for off in range(5):
        t.add("p", off)
    for off in (1, 2, 3, 4):
        t.done("p", off)
    assert t.pending() == 1
    assert t.uncommitted() == 5  # the slow head holds the commit: all five would be redone
    t.done("p", 0)
    assert t.uncommitted("p") == 5
    t.committed("p", t.committable("p"))
    assert t.uncommitted() == 0
    t.add("p", 5)
    assert t.uncommitted() == 1 and t.uncommitted("q") == 0
