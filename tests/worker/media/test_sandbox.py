"""The media sandbox: hard deadlines, crash containment, shared-memory frames, clean exits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.hostile_media import DripServer
from worker.media.decode import decode_frames
from worker.media.sandbox import MediaPool, hard_deadline_s
from worker.settings import Settings
from worker.types import ScanError, ScanRequest


@pytest.fixture
def drip():
    server = DripServer()
    yield server
    server.close()


def _settings(carphone, **kw) -> Settings:
    return Settings(allowed_roots=(str(carphone.parent),), http_allow_private=True, decode_threads=1, **kw)


def _load(pool, uri):
    try:
        return pool.load(ScanRequest("r", str(uri)))
    except ScanError as exc:
        return exc


def test_frames_come_back_through_shared_memory_and_match_in_thread_decoding(carphone):
    settings = _settings(carphone)
    with MediaPool(settings) as pool:
        loaded = pool.load(ScanRequest("r", str(carphone)))
    expected, info = decode_frames(carphone, settings)
    assert loaded.info == info and len(loaded.frames) == len(expected) == settings.frames_per_video
    for got, want in zip(loaded.frames, expected):
        assert (got.index, got.time_s) == (want.index, want.time_s)
        np.testing.assert_array_equal(got.image, want.image)
        # A view on the mapped memfd, not an array unpickled into the parent's heap.
        assert not got.image.flags.owndata and type(got.image.base).__name__ != "bytes"
    assert "fetch" in loaded.timings_ms and "decode" in loaded.timings_ms


def test_a_hung_download_is_killed_at_the_hard_deadline_and_the_next_request_is_answered(carphone, drip):
    settings = _settings(carphone, media_deadline_s=2.0)
    assert hard_deadline_s(settings) == 2.0
    with MediaPool(settings) as pool:
        pool.load(ScanRequest("warm", str(carphone)))  # the child is up: time only the hang
        first_pid = pool.pids()
        t0 = time.monotonic()
        err = _load(pool, drip.url)
        took = time.monotonic() - t0
        assert isinstance(err, ScanError) and err.code == "timeout", err
        assert "2 s" in err.reason
        assert 2.0 <= took < 2.0 + 5.0
        assert pool.pids() == []  # killed, not left running
        after = pool.load(ScanRequest("next", str(carphone)))
        assert len(after.frames) == settings.frames_per_video
        assert pool.pids() and pool.pids() != first_pid
    assert not _alive(first_pid[0])


def test_a_child_killed_from_outside_is_decoder_crashed_and_replaced(carphone, drip):
    settings = _settings(carphone, media_deadline_s=60.0)
    with MediaPool(settings) as pool:
        pool.load(ScanRequest("warm", str(carphone)))
        (pid,) = pool.pids()
        result: list = []
        worker = threading.Thread(target=lambda: result.append(_load(pool, drip.url)))
        worker.start()
        assert drip.connected.wait(20)  # the child is inside the download, hanging
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        worker.join(10)
        assert time.monotonic() - t0 < 10
        (err,) = result
        assert isinstance(err, ScanError) and err.code == "decoder_crashed"
        assert "SIGKILL" in err.reason
        after = pool.load(ScanRequest("next", str(carphone)))
        assert len(after.frames) == settings.frames_per_video
        (new_pid,) = pool.pids()
        assert new_pid != pid


def test_concurrent_loads_from_many_threads(carphone, astronaut, tmp_path):
    settings = Settings(allowed_roots=(str(carphone.parent), str(astronaut.parent)), decode_threads=2)
    uris = [carphone, astronaut] * 4
    results: dict[int, object] = {}
    with MediaPool(settings) as pool:
        threads = [
            threading.Thread(target=lambda i=i, u=u: results.__setitem__(i, pool.load(ScanRequest(f"r{i}", str(u)))))
            for i, u in enumerate(uris)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(pool.pids()) == 2
    assert [len(results[i].frames) for i in range(len(uris))] == [10, 1] * 4
    assert len({results[i].sha256 for i in range(len(uris))}) == 2


def test_cache_hit_stops_before_decoding(carphone):
    seen = []

    def should_decode(sha):
        seen.append(sha)
        return False

    with MediaPool(_settings(carphone)) as pool:
        loaded = pool.load(ScanRequest("r", str(carphone)), should_decode=should_decode)
        decoded = pool.load(ScanRequest("r", str(carphone)), should_decode=lambda sha: True)
    assert seen == [loaded.sha256] and loaded.info is None and loaded.frames == []
    assert "decode" not in loaded.timings_ms
    assert decoded.sha256 == loaded.sha256 and len(decoded.frames) == 10


def test_an_error_in_the_child_is_the_scan_error_it_raised(carphone, tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video\n" * 100)
    with MediaPool(Settings(allowed_roots=(str(tmp_path),), decode_threads=1)) as pool:
        err = _load(pool, bad)
        (pid,) = pool.pids()
        assert isinstance(err, ScanError) and err.code == "unreadable_media"
        assert _load(pool, tmp_path / "missing.mp4").code == "source_not_found"
        assert pool.pids() == [pid]  # a refusal costs no process


def test_memory_cap_fails_the_input_not_the_worker(tmp_path):
    """With the pixel check off, a PNG declaring 16000x16000 (zeros, 750 KB on disk) would need
    768 MB: the child's address-space cap stops it and the next request is answered."""
    from tests.fixtures.hostile_media import zero_png

    big = zero_png(tmp_path / "big.png", 16000, 16000)
    small = zero_png(tmp_path / "small.png", 64, 48)
    settings = Settings(allowed_roots=(str(tmp_path),), max_pixels=10**9, media_memory_mb=1000, decode_threads=1)
    with MediaPool(settings) as pool:
        err = _load(pool, big)
        assert isinstance(err, ScanError) and err.code == "out_of_memory", err
        assert len(pool.load(ScanRequest("next", str(small))).frames) == 1


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state


def test_pool_close_stops_every_child(carphone):
    pool = MediaPool(_settings(carphone).replace(decode_threads=2))
    threads = [threading.Thread(target=pool.load, args=(ScanRequest("r", str(carphone)),)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    pids = pool.pids()
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    pool.close()
    assert pool.pids() == [] and not any(_alive(p) for p in pids)
    with pytest.raises(ScanError):
        pool.load(ScanRequest("r", str(carphone)))


def test_children_die_when_the_worker_is_killed(carphone, drip, tmp_path):
    """SIGKILL to the worker (no cleanup runs) still leaves no media child behind, busy or idle."""
    script = textwrap.dedent(
        f"""
        import sys, threading, time
        from worker.media.sandbox import MediaPool
        from worker.settings import Settings
        from worker.types import ScanRequest

        if __name__ == "__main__":
            pool = MediaPool(Settings(allowed_roots=({str(carphone.parent)!r},), http_allow_private=True, decode_threads=2))
            pool.load(ScanRequest("a", {str(carphone)!r}))
            threading.Thread(target=pool.load, args=(ScanRequest("b", {drip.url!r}),), daemon=True).start()
            time.sleep(1.0)
            print(" ".join(map(str, pool.pids())), flush=True)
            time.sleep(600)
        """
    )
    path = tmp_path / "worker_like.py"
    path.write_text(script)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = ""
        while not line.replace(" ", "").isdigit():  # log lines share stdout
            line = proc.stdout.readline().strip()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        assert drip.connected.wait(20)  # one of them is busy in the hung download
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)


def test_default_hard_deadline_is_download_plus_decode_plus_slack():
    assert hard_deadline_s(Settings()) == 300.0 + 60.0 + 10.0
    assert hard_deadline_s(Settings(http_total_timeout_s=20, decode_timeout_s=5)) == 35.0


def test_a_fifo_in_the_allowed_folder_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    with MediaPool(Settings(allowed_roots=(str(tmp_path),), decode_threads=1, media_deadline_s=30)) as pool:
        t0 = time.monotonic()
        err = _load(pool, fifo)
        assert isinstance(err, ScanError) and err.code == "source_refused"
        assert time.monotonic() - t0 < 20


def _threads_and_vm_kib(pid: int) -> tuple[int, int]:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(status["Threads"]), int(status["VmSize"].split()[0])


def test_a_child_does_not_pile_up_decoder_threads_or_address_space(carphone):
    """Decoders left in reference cycles once held their threads until the address-space cap
    failed a request after ~10 videos (EAGAIN from the scaler)."""
    with MediaPool(_settings(carphone)) as pool:
        for _ in range(2):
            pool.load(ScanRequest("r", str(carphone)))
        (pid,) = pool.pids()
        threads, vm_kib = _threads_and_vm_kib(pid)
        for _ in range(10):
            pool.load(ScanRequest("r", str(carphone)))
        later_threads, later_vm_kib = _threads_and_vm_kib(pid)
    assert later_threads <= threads + 1
    assert later_vm_kib < vm_kib + 64 * 1024


def test_start_spawns_every_child_up_front_and_loads_reuse_them(carphone):
    with MediaPool(_settings(carphone).replace(decode_threads=2)) as pool:
        assert pool.pids() == []  # lazily, until asked
        pids = sorted(pool.start().pids())
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        assert sorted(pool.start().pids()) == pids  # starting again spawns nothing
        assert not isinstance(_load(pool, carphone), ScanError)
        assert sorted(pool.pids()) == pids  # the first load found its child already running
