"""Fetch + decode in child processes that can be killed: a hard deadline and crash containment.

FFmpeg and OpenCV run untrusted bytes through C code. In a thread of the worker, a call
that never returns holds the thread for good, a segfault kills the worker, and a decoder
bomb takes the worker's memory. Here each load runs in one of `decode_threads` child
processes; the parent waits at most the hard deadline (`media_deadline_s`) and then kills
the child (error_code `timeout`); a child that dies on its own gives `decoder_crashed`.
Either way a fresh child takes the dead one's place on its next request and the worker
carries on. Each child caps its own address space (`media_memory_mb`), so a bomb kills or
fails only that child.

Frames come back in one memfd (shared memory) whose descriptor is passed over the pipe:
the parent maps it and the frames are numpy views on those pages, never pickled copies.

Children come from a forkserver (started once; never a fork of the threaded worker with
ONNX Runtime in it). A child exits the moment the worker's end of its pipe closes, which
the kernel does when the worker dies however it dies, busy or idle; `close` (also run at
interpreter exit) stops them in an orderly way.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import math
import mmap
import multiprocessing as mp
import os
import queue
import resource
import select
import shutil
import signal
import tempfile
import threading
import time
import weakref
from multiprocessing import reduction
from typing import Sequence

import numpy as np
import structlog

from worker.media.loader import Loaded, ShouldDecode, load_media
from worker.settings import Settings
from worker.types import Frame, ScanError, ScanRequest, VideoInfo

log = structlog.get_logger(__name__)

_CTX = mp.get_context("forkserver")
# The forkserver imports the media stack once; each child is a cheap fork of it.
_CTX.set_forkserver_preload(["worker.media.loader"])

_PR_SET_PDEATHSIG = 1
_M_ARENA_MAX = -8
# Slack on top of the cooperative limits (download and decode clocks) before the parent
# kills: those report their own, more precise, errors when they can.
_DEADLINE_SLACK_S = 10.0


def hard_deadline_s(settings: Settings) -> float:
    """Wall-clock limit on one load in a child, after which the child is killed."""
    if settings.media_deadline_s > 0:
        return settings.media_deadline_s
    return settings.http_total_timeout_s + settings.decode_timeout_s + _DEADLINE_SLACK_S


class MediaPool:
    """`size` sandbox children; `load` may be called from many threads at once."""

    def __init__(self, settings: Settings, size: int | None = None):
        self.settings = settings
        self.deadline_s = hard_deadline_s(settings)
        self._children = [_Child(settings) for _ in range(max(1, size or settings.decode_threads))]
        self._idle: queue.Queue[_Child] = queue.Queue()
        for child in self._children:
            self._idle.put(child)
        self._closed = False
        # Close the children when the pool is collected or the interpreter exits.
        self._finalizer = weakref.finalize(self, _close_children, list(self._children))

    def load(
        self, request: ScanRequest, extra_roots: Sequence[str] = (), should_decode: ShouldDecode | None = None
    ) -> Loaded:
        """As `loader.load_media`, in a child; raises ScanError (`timeout`, `decoder_crashed`, ...)."""
        if self._closed:
            raise ScanError("internal_error", "the media pool is closed")
        child = self._idle.get()
        try:
            return child.run(request, tuple(extra_roots), should_decode, self.deadline_s)
        finally:
            self._idle.put(child)

    def start(self) -> "MediaPool":
        """Start every child now rather than on first use, so the first requests after a worker
        (re)start do not each wait for a process to spawn and import the decoders."""
        for child in self._children:
            child.ensure_started()
        return self

    def pids(self) -> list[int]:
        """Process ids of the children running now (tests, diagnostics)."""
        procs = [c.proc for c in self._children]  # read once: another thread may replace them
        return [p.pid for p in procs if p is not None and p.pid is not None]

    def close(self) -> None:
        self._closed = True
        self._finalizer()

    def __enter__(self) -> "MediaPool":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _close_children(children: list["_Child"]) -> None:
    for child in children:
        child.stop()


class _Timeout(Exception):
    pass


class _Died(Exception):
    pass


class _Child:
    """One child process and its pipe; used by one thread at a time (the pool's queue)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.proc: mp.process.BaseProcess | None = None
        self.conn = None
        self.tmpdir: str | None = None
        self._lock = threading.Lock()  # run() vs stop() at exit

    def start(self) -> None:
        # Downloads go to a folder of this child's, so a killed child's files are removed.
        self.tmpdir = tempfile.mkdtemp(prefix="dfd-media-")
        parent_conn, child_conn = _CTX.Pipe(duplex=True)  # a socketpair: can carry descriptors
        self.proc = _CTX.Process(
            target=_child_main, args=(child_conn, self.settings, self.tmpdir), name="dfd-media", daemon=True
        )
        try:
            self.proc.start()
        except BaseException:
            self.proc = None
            parent_conn.close()
            raise
        finally:
            child_conn.close()
        self.conn = parent_conn
        log.debug("media_child_started", pid=self.proc.pid)

    def ensure_started(self) -> None:
        with self._lock:
            self._ensure_started_locked()

    def _ensure_started_locked(self) -> None:
        if self.proc is None or not self.proc.is_alive():
            self._discard()
            self.start()

    def run(
        self, request: ScanRequest, extra_roots: tuple[str, ...], should_decode: ShouldDecode | None, deadline_s: float
    ) -> Loaded:
        with self._lock:
            self._ensure_started_locked()
            deadline = time.monotonic() + deadline_s
            try:
                try:
                    self.conn.send(("load", request, extra_roots, should_decode is not None))
                except OSError as exc:
                    raise _Died() from exc
                return self._answer(should_decode, deadline)
            except _Timeout:
                pid = self.proc.pid
                self._discard()
                log.warning("media_child_killed", pid=pid, deadline_s=deadline_s)
                raise ScanError(
                    "timeout", f"fetch and decode did not finish within the hard limit of {deadline_s:g} s"
                ) from None
            except _Died:
                code = self._discard()
                how = f"signal {signal.Signals(-code).name}" if code and code < 0 else f"exit status {code}"
                log.warning("media_child_died", exit=how)
                raise ScanError("decoder_crashed", f"the decoding process died ({how})") from None
            except ScanError:
                raise
            except BaseException:
                self._discard()  # the conversation is out of step: start afresh next time
                raise

    def _answer(self, should_decode: ShouldDecode | None, deadline: float) -> Loaded:
        while True:
            msg = self._recv(deadline)
            kind = msg[0]
            if kind == "fetched":
                go = True
                try:
                    go = should_decode(msg[1])
                finally:
                    self.conn.send(go)
            elif kind == "cached":
                _, sha256, timings = msg
                return Loaded(sha256, timings_ms=timings)
            elif kind == "error":
                _, code, reason, transient = msg
                if code == "out_of_memory":
                    self._discard()  # it exits after saying so: don't hand it the next request
                raise ScanError(code, reason, transient=transient)
            elif kind == "frames":
                _, sha256, layout, total, info, timings = msg
                self._wait(deadline)
                try:
                    fd = reduction.recv_handle(self.conn)
                except (EOFError, OSError, RuntimeError) as exc:
                    raise _Died() from exc
                try:
                    # Populated in one call rather than one page fault at a time.
                    shared = mmap.mmap(fd, total, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
                finally:
                    os.close(fd)
                frames = [
                    Frame(index, t, np.frombuffer(shared, np.uint8, math.prod(shape), offset).reshape(shape))
                    for index, t, shape, offset in layout
                ]
                return Loaded(sha256, frames, VideoInfo(**info), timings)
            else:
                raise RuntimeError(f"unexpected message from the media child: {kind!r}")

    def _wait(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not self.conn.poll(remaining):
            raise _Timeout()

    def _recv(self, deadline: float):
        self._wait(deadline)
        try:
            return self.conn.recv()
        except (EOFError, OSError) as exc:
            raise _Died() from exc

    def _discard(self) -> int | None:
        """Kill the child if it runs, reap it, remove its files; returns its exit code."""
        code = None
        if self.proc is not None:
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join(5)
            code = self.proc.exitcode
            if code is not None:
                self.proc.close()
            self.proc = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None
        return code

    def stop(self) -> None:
        """Ask an idle child to exit; kill it if it is busy or does not go in time."""
        if self._lock.acquire(timeout=0.1):
            try:
                if self.conn is not None and self.proc is not None and self.proc.is_alive():
                    try:
                        self.conn.send(None)
                        self.proc.join(2)
                    except OSError:
                        pass
                self._discard()
            finally:
                self._lock.release()
        elif self.proc is not None:
            self.proc.kill()  # busy in another thread at exit: that thread sees _Died


# --- the child --------------------------------------------------------------------------


def _child_main(conn, settings: Settings, tmpdir: str) -> None:
    _die_with_parent()
    _watch_parent(conn)
    # OpenCV reads its pixel cap once, when loaded; and loading it maps large libraries,
    # which must happen before the address-space cap.
    os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(settings.max_pixels)
    import cv2  # noqa: F401

    if settings.neardup_enabled:  # the grid is hashed here (worker/media/loader.py): load PDQ now, not per first video
        import worker.pipeline.neardup  # noqa: F401

    _limit_memory(settings.media_memory_mb)
    tempfile.tempdir = tmpdir
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    while True:
        # PyAV's containers and codec contexts sit in reference cycles, each holding decoder
        # and scaler threads (12 per 720p video) and their stacks until the cycle collector
        # runs; in this small process it seldom does, and address space ran out after ~10
        # videos. Collect once per request, after the answer went out, off the critical path.
        gc.collect()
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if msg is None:
            return
        _, request, extra_roots, ask = msg

        def should_decode(sha256: str) -> bool:
            _reply(conn, ("fetched", sha256))
            try:
                return bool(conn.recv())
            except (EOFError, OSError):
                os._exit(0)

        try:
            loaded = load_media(request, settings, extra_roots, should_decode if ask else None)
            if loaded.info is None:
                _reply(conn, ("cached", loaded.sha256, loaded.timings_ms))
            else:
                _send_frames(conn, loaded)
        except ScanError as exc:
            _reply(conn, ("error", exc.code, exc.reason, exc.transient))
            if exc.code == "out_of_memory":
                return  # whatever state the failed allocation left behind goes with this process
        except MemoryError:
            _reply(conn, ("error", "out_of_memory", f"decoding needed more than {settings.media_memory_mb} MiB", False))
            return
        except Exception as exc:  # a library bug: report it, keep serving
            log.exception("media_child_error", request_id=request.request_id)
            _reply(conn, ("error", "internal_error", f"{type(exc).__name__}: {exc}", False))


def _reply(conn, msg: tuple) -> None:
    try:
        conn.send(msg)
    except OSError:
        os._exit(0)  # the parent gave up on this request (deadline) or is gone


def _send_frames(conn, loaded: Loaded) -> None:
    """Copy the frames into one memfd and pass its descriptor; the parent maps it."""
    offsets: dict[int, int] = {}  # a frame shown at two targets is one image: store it once
    layout, total = [], 0
    for f in loaded.frames:
        if id(f.image) not in offsets:
            offsets[id(f.image)] = total
            total += f.image.nbytes
        layout.append((f.index, f.time_s, f.image.shape, offsets[id(f.image)]))
    fd = os.memfd_create("dfd-frames", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, total)
        # pwrite fills the memfd's pages in the kernel: a third less CPU than copying through
        # a mapping of our own, which faults every page in first (measured on 720p frames).
        done = set()
        for f in loaded.frames:
            start = offsets[id(f.image)]
            if start not in done:
                data = memoryview(np.ascontiguousarray(f.image)).cast("B")
                written = 0
                while written < len(data):
                    written += os.pwrite(fd, data[written:], start + written)
                done.add(start)
        loaded.frames.clear()
        _reply(conn, ("frames", loaded.sha256, layout, total, dataclasses.asdict(loaded.info), loaded.timings_ms))
        try:
            reduction.send_handle(conn, fd, os.getppid())
        except OSError:
            os._exit(0)
    finally:
        os.close(fd)


def _die_with_parent() -> None:
    """SIGKILL this process when its parent (the forkserver, which exits with the worker) dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        libc.mallopt(_M_ARENA_MAX, 2)  # decoder threads: don't reserve 64 MB of address space each
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent died before the request above took effect
        os._exit(0)


def _watch_parent(conn) -> None:
    """Exit as soon as the worker's end of the pipe closes, even in the middle of a decode.

    The forkserver (the parent the kernel knows) outlives the worker while any child holds
    its liveness pipe, so the death signal alone would not reach a child stuck in a hung
    call; only the worker holds the other end of this socket, and the kernel closes it when
    the worker dies, however it dies.
    """

    def watch() -> None:
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLRDHUP)
        while True:
            for _, events in poller.poll():
                if events & (select.POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL):
                    os._exit(0)

    previous = threading.stack_size(256 * 1024)
    try:
        threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    finally:
        threading.stack_size(previous)


def _limit_memory(megabytes: int) -> None:
    if megabytes <= 0:
        return
    limit = megabytes * 2**20
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ValueError, OSError) as exc:
        log.warning("media_memory_limit_not_set", error=str(exc))
