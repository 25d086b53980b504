"""Sample N frames spread over a video with PyAV, cheaply and within caps.

Two ways to reach the sampled frames give the same pixels:
- "seek": jump to the keyframe before each target time and decode forward from there
  (skipping the jump when the target lies in the group of pictures already being decoded);
- "sequential": decode every frame from the start and keep the ones wanted.
Seeking wins when keyframes are close together compared with the spacing of the targets;
sequential wins for long GOPs, short clips and containers without a keyframe index.
The frame kept for target time t is the one on screen at t: the last frame whose
presentation time is <= t. Only kept frames are converted to RGB, and while the decoder is
well before the next target it skips frames that no other frame refers to (half of a
typical H.264 stream), which changes no pixel of the frames that are decoded.
"""

from __future__ import annotations

import bisect
import math
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Protocol

import av
import numpy as np

from worker.settings import Settings
from worker.types import Frame, ScanError, VideoInfo

# Demuxers FFmpeg uses for still images and text: a video container never opens with these.
_STILL_IMAGE_FORMATS = {"image2", "apng"}
# A seek flushes the decoder and re-reads from a keyframe: count it as this many frames.
_SEEK_COST_FRAMES = 4
# Seeking must save at least this fraction of the frames decoded to be worth it (measured
# on 720p H.264 with a 2 s GOP and 1 s between targets: 14% fewer frames, ~20% less CPU).
_SEEK_MIN_SAVING = 0.1
_EPS = 1e-6
# Frame threading holds a frame per thread, flushes on every seek and costs CPU to keep the
# threads in step; the worker already decodes several videos at once, so slice threading
# is cheaper. Measured on 720p clips, 2 cores: 0.37 CPU-s per video instead of 0.46 with
# two videos decoding at once, 0.26 s wall instead of 0.37 s for one.
_THREAD_TYPE = "SLICE"


class Grid(Protocol):
    """Frames wanted at fixed times from the start of the stream, besides the sampled ones
    (the near-duplicate hashes: worker/pipeline/neardup.py). Handed the decoded frame as it
    is, so it converts only what it needs (a small image)."""

    def times(self, duration_s: float) -> list[float]: ...

    def add(self, position: int, time_s: float, frame: av.VideoFrame, rotation: int) -> None: ...


def sample_times(duration_s: float, n: int) -> list[float]:
    """`n` times spread over `duration_s`: the centres of `n` equal segments."""
    if n <= 0 or duration_s <= 0:
        return []
    step = duration_s / n
    return [(i + 0.5) * step for i in range(n)]


def decode_frames(
    path: str | Path, settings: Settings, *, strategy: str | None = None, grid: Grid | None = None
) -> tuple[list[Frame], VideoInfo]:
    """Decode `settings.frames_per_video` frames spread over the video at `path`.

    `strategy` forces "seek" or "sequential" (benchmarks, tests); None picks the cheaper.
    `grid`: the frames on screen at `grid.times(duration)` are decoded in the same pass and
    handed to `grid.add` (a frame that is also sampled is decoded once).
    Returns upright RGB frames and what was learned about the video; raises ScanError with a
    code (`unreadable_media`, `unsupported_format`, `no_video_stream`, `too_large`, `too_long`, `decode_timeout`,
    `no_frames`) and a readable reason for anything that is not a decodable video.
    """
    path = Path(path)
    clock = _Clock(settings.decode_timeout_s)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ScanError("unreadable_media", f"cannot read {path.name}: {exc.strerror}") from exc
    if size == 0:
        raise ScanError("unreadable_media", "the file is empty (0 bytes)")

    container = _open(path, settings.max_pixels)
    try:
        probe = _probe(container, path)
        _check_caps(probe, settings)
        if probe.duration_s is None:
            probe.duration_s = _demux_duration(container, probe, clock, settings.max_duration_s)
            _check_caps(probe, settings)
            container = _reopen(container, path, probe, settings.max_pixels)
        sampled = sample_times(probe.duration_s, settings.frames_per_video)
        grid_times = grid.times(probe.duration_s) if grid is not None else []
        targets = sorted(set(sampled) | set(grid_times))
        _configure(probe.stream, settings.max_pixels)
        keyframes = _keyframe_times(probe.stream, probe)
        if strategy is None:
            strategy = _choose_strategy(targets, keyframes, probe)
        elif strategy not in ("seek", "sequential"):
            raise ValueError(f"unknown decode strategy {strategy!r}")
        info = VideoInfo(
            width=probe.width,
            height=probe.height,
            duration_s=probe.duration_s,
            fps=probe.fps,
            codec=probe.codec,
            strategy=strategy,
        )
        # Seeking needs a keyframe index only to decide when to skip; the seek itself doesn't.
        if strategy == "seek" and not keyframes:
            keyframes = [0.0]
        skip_nonref = True
        while True:
            try:
                use_keyframes = keyframes if info.strategy == "seek" else None
                picked = _pick(container, probe, targets, use_keyframes, clock, settings, skip_nonref)
                frames, info.rotation = _to_frames(picked, probe, targets, set(sampled), grid, grid_times)
                break
            except _SeekFailed:
                info.strategy = "sequential"
            except _SkipMiss:
                skip_nonref = False
            container = _reopen(container, path, probe, settings.max_pixels)
    finally:
        container.close()
    if not frames:
        raise ScanError("no_frames", "no frame could be decoded from the video stream")
    if info.rotation in (90, 270):
        info.width, info.height = info.height, info.width
    return frames, info


# --- opening and probing ---------------------------------------------------------------


@dataclass
class _Probe:
    stream: av.video.stream.VideoStream
    width: int
    height: int
    codec: str
    fps: float
    duration_s: float | None
    start_pts: int  # presentation timestamp of time 0, in stream time base
    time_base: Fraction
    rotate_tag: int  # clockwise degrees from a legacy `rotate` tag, 0 if none


class _Clock:
    """Wall-clock budget for one video's decode."""

    def __init__(self, limit_s: float):
        self.limit_s = limit_s
        self.deadline = time.monotonic() + limit_s

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise ScanError(
                "decode_timeout", f"decoding took longer than the {self.limit_s:g} s limit", transient=False
            )


# The demuxers a video may be opened with: containers that hold their media in their own
# bytes. Never playlists or lists of other files or URLs (hls, dash, concat, image2
# patterns, ffconcat, tee, ...), which would read beyond the file the request named.
ALLOWED_DEMUXERS = (
    "mov",  # mp4, mov, m4v, 3gp, 3g2, mj2 (FFmpeg's "mov,mp4,m4a,3gp,3g2,mj2" demuxer)
    "matroska",  # mkv and webm
    "avi",
    "flv",
    "mpegts",
    "mpeg",  # MPEG program streams (.mpg, .vob)
    "asf",  # wmv
    "ogg",
    "ivf",  # raw VP8/VP9/AV1
    "h264",  # raw elementary streams
    "hevc",
    "m4v",
    "mpegvideo",
    "gif",
)


def _open(path: Path, max_pixels: int) -> av.container.InputContainer:
    # format_whitelist makes FFmpeg refuse (EINVAL) a file whose probed demuxer is not listed,
    # before that demuxer reads anything; protocol_whitelist stops nested opens of URLs.
    options = {
        "format_whitelist": ",".join(ALLOWED_DEMUXERS),
        "protocol_whitelist": "file",
    }
    try:
        # max_pixels also reaches the decoders FFmpeg opens while probing: a frame larger
        # than the limit is refused there rather than allocated.
        return av.open(
            str(path),
            mode="r",
            metadata_errors="ignore",
            container_options=options,
            options={"max_pixels": str(_decoder_pixel_limit(max_pixels))},
        )
    except av.ArgumentError as exc:
        raise ScanError(
            "unsupported_format",
            "not a video container accepted here (text, still images, playlists, lists of files"
            " and image sequences are refused)",
        ) from exc
    except av.FFmpegError as exc:
        raise ScanError("unreadable_media", f"not a readable video file ({_ffmpeg_message(exc)})") from exc


def _reopen(
    container: av.container.InputContainer, path: Path, probe: _Probe, max_pixels: int
) -> av.container.InputContainer:
    """A fresh container at the start of the file (cheaper and surer than seeking to 0)."""
    index = probe.stream.index
    container.close()
    container = _open(path, max_pixels)
    probe.stream = container.streams[index]
    _configure(probe.stream, max_pixels)
    return container


def _configure(stream: av.video.stream.VideoStream, max_pixels: int) -> None:
    ctx = stream.codec_context
    ctx.thread_type = _THREAD_TYPE
    # The decoder refuses a frame larger than this even if the container's header lied.
    ctx.options = {**ctx.options, "max_pixels": str(_decoder_pixel_limit(max_pixels))}


def _decoder_pixel_limit(max_pixels: int) -> int:
    """FFmpeg checks its limit against the width rounded up to its row alignment (up to 64
    pixels more per row): 1/16 of room keeps any frame at least 1024 wide that passed the
    header check decodable."""
    return max_pixels + max_pixels // 16


def _ffmpeg_message(exc: av.FFmpegError) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def _probe(container: av.container.InputContainer, path: Path) -> _Probe:
    fmt = container.format.name
    if fmt == "tty":
        raise ScanError("unreadable_media", f"{path.name} is a text file, not a video")
    if fmt in _STILL_IMAGE_FORMATS or fmt.endswith("_pipe"):
        raise ScanError("unreadable_media", f"{path.name} is a still image ({fmt}), not a video")
    # Cover art (a music file's album picture) is a "video" stream of one image: not a video.
    videos = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not videos:
        kinds = sorted({s.type for s in container.streams})
        if container.streams.video:
            has = "only cover art" + (f" and {' and '.join(k for k in kinds if k != 'video')}" if len(kinds) > 1 else "")
        else:
            has = f"only {' and '.join(kinds)} streams" if kinds else "no streams"
        raise ScanError("no_video_stream", f"the file has no video stream ({has})")
    stream = next((s for s in videos if s.disposition & av.stream.Disposition.default), videos[0])
    ctx = stream.codec_context
    if not ctx.width or not ctx.height:
        raise ScanError("unreadable_media", "the video stream has no frame size (corrupt or unsupported)")
    tb = stream.time_base or Fraction(1, av.time_base)
    start_pts = stream.start_time or 0
    duration_s = None
    if stream.duration:
        duration_s = float(stream.duration * tb)
    elif container.duration:
        # Container duration counts from the container's start, which may precede ours.
        duration_s = container.duration / av.time_base
        if stream.start_time is not None and container.start_time is not None:
            duration_s -= float(stream.start_time * tb) - container.start_time / av.time_base
    if duration_s is not None and duration_s <= 0:
        duration_s = None
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    if stream.frames and duration_s:
        fps = stream.frames / duration_s
    try:
        rotate_tag = int(float(stream.metadata.get("rotate", "0"))) % 360
    except ValueError:
        rotate_tag = 0
    return _Probe(stream, ctx.width, ctx.height, ctx.name, fps, duration_s, start_pts, tb, rotate_tag)


def _check_caps(probe: _Probe, settings: Settings) -> None:
    pixels = probe.width * probe.height
    if pixels > settings.max_pixels:
        raise ScanError(
            "too_large",
            f"frame size {probe.width}x{probe.height} ({pixels} pixels) is over the limit of {settings.max_pixels}",
        )
    if probe.duration_s is not None and probe.duration_s > settings.max_duration_s:
        raise ScanError(
            "too_long", f"duration {probe.duration_s:.1f} s is over the limit of {settings.max_duration_s:g} s"
        )


def _demux_duration(
    container: av.container.InputContainer, probe: _Probe, clock: _Clock, max_duration_s: float
) -> float:
    """Duration from reading every packet (no decoding), for containers that don't state it."""
    last_end = None
    first = None
    count = 0
    try:
        for packet in container.demux(probe.stream):
            clock.check()
            if packet.size == 0:
                continue
            count += 1
            if probe.fps > 0 and count / probe.fps > max_duration_s:
                break  # too long already (streams without timestamps)
            if packet.pts is not None:
                first = packet.pts if first is None else min(first, packet.pts)
                end = packet.pts + (packet.duration or 0)
                last_end = end if last_end is None else max(last_end, end)
                if (last_end - first) * probe.time_base > max_duration_s:
                    break  # too long already: no need to read the rest
    except av.FFmpegError:
        pass  # a damaged tail: what was read so far stands
    if count == 0:
        raise ScanError("no_frames", "the video stream holds no frames")
    if last_end is not None and first is not None and last_end > first:
        probe.start_pts = first
        return float((last_end - first) * probe.time_base)
    if probe.fps > 0:
        return count / probe.fps
    raise ScanError("unreadable_media", "the video has neither timestamps nor a frame rate")


# --- choosing how to reach the targets ----------------------------------------------------


def _keyframe_times(stream: av.video.stream.VideoStream, probe: _Probe) -> list[float]:
    """Keyframe times (s, from decode timestamps) from the container's index; [] if none."""
    try:
        entries = stream.index_entries
        times = [
            float((e.timestamp - probe.start_pts) * probe.time_base) for e in entries if e.is_keyframe
        ]
    except (AttributeError, av.FFmpegError):
        return []
    return sorted(times)


def _choose_strategy(targets: list[float], keyframes: list[float], probe: _Probe) -> str:
    """Estimate frames decoded either way and pick the cheaper; no index means sequential."""
    if len(keyframes) < 2 or not targets or probe.fps <= 0:
        return "sequential"
    sequential = targets[-1] * probe.fps
    seeking = 0.0
    position = -math.inf  # time the decoder has reached
    for t in targets:
        kf = keyframes[max(bisect.bisect_right(keyframes, t + _EPS) - 1, 0)]
        if kf > position:
            seeking += _SEEK_COST_FRAMES + (t - kf) * probe.fps
        else:
            seeking += (t - position) * probe.fps
        position = t
    return "seek" if seeking < (1 - _SEEK_MIN_SAVING) * sequential else "sequential"


# --- decoding -----------------------------------------------------------------------------


def _time_of(frame: av.VideoFrame | av.Packet, probe: _Probe, fallback: float) -> float:
    if frame.pts is None:
        return fallback
    return float((frame.pts - probe.start_pts) * probe.time_base)


class _Cursor:
    """Decodes forward from the container's position, knowing the frame on screen and the next.

    While packets are more than two frames before the target, the decoder skips the frames
    no other frame refers to (skip_frame=NONREF: about half of an H.264 stream with
    B-frames, decoded for nothing); reference frames decode bit-exactly the same either
    way. Should a skipped frame have been the one on screen at the target (a gap in a
    variable-frame-rate stream), it raises _SkipMiss and the caller decodes again without.
    """

    def __init__(
        self,
        container: av.container.InputContainer,
        probe: _Probe,
        clock: _Clock,
        settings: Settings,
        target: float,
        skip_nonref: bool,
    ):
        self._probe = probe
        self._max_s = settings.max_duration_s
        self.step = 1 / probe.fps if probe.fps > 0 else 0.0
        self._skip = skip_nonref and self.step > 0
        self._skipping: bool | None = None  # unknown: set on the first packet
        self._skipped_until = -math.inf  # latest time of a packet sent while skipping
        self._target = target
        self._frames = self._decode(container, clock)
        self.shown: tuple[float, av.VideoFrame] | None = None
        self.ahead = self._next(0.0)

    def _decode(self, container: av.container.InputContainer, clock: _Clock) -> Iterator[av.VideoFrame]:
        """Frames in presentation order; stops at the end of the stream or where it is damaged."""
        ctx = self._probe.stream.codec_context
        try:
            for packet in container.demux(self._probe.stream):
                clock.check()
                far = False
                if self._skip and packet.pts is not None:
                    t = _time_of(packet, self._probe, 0.0)
                    far = t < self._target - 2 * self.step
                    if far:
                        self._skipped_until = max(self._skipped_until, t)
                if far is not self._skipping:
                    # FFmpeg copies this into the frame threads when the packet is sent.
                    ctx.skip_frame = "NONREF" if far else "DEFAULT"
                    self._skipping = far
                for frame in packet.decode():
                    clock.check()
                    yield frame
        except av.FFmpegError:
            return  # truncated or corrupt from here on: keep what was decoded

    def _next(self, fallback: float) -> tuple[float, av.VideoFrame] | None:
        frame = next(self._frames, None)
        if frame is None:
            return None
        t = _time_of(frame, self._probe, fallback)
        if t > self._max_s:
            raise ScanError("too_long", f"the video runs past the limit of {self._max_s:g} s")
        return t, frame

    @property
    def position(self) -> float:
        """Time of the last frame decoded (inf at the end of the stream)."""
        return math.inf if self.ahead is None else self.ahead[0]

    def frame_at(self, target: float) -> tuple[float, av.VideoFrame] | None:
        """The frame on screen at `target`; None past the end of the stream."""
        self._target = target
        while self.ahead is not None and self.ahead[0] <= target + _EPS:
            self.shown = self.ahead
            self.ahead = self._next(self.shown[0] + self.step)
        shown_time = self.shown[0] if self.shown is not None else -math.inf
        if shown_time + _EPS < self._skipped_until <= target + _EPS:
            raise _SkipMiss(f"a skipped frame at {self._skipped_until:.3f} s was on screen at {target:.3f} s")
        if self.shown is None:
            return self.ahead  # target before the first frame reached: the nearest one
        if self.ahead is None and target >= self.shown[0] + max(self.step, _EPS):
            return None
        return self.shown


def _pick(
    container: av.container.InputContainer,
    probe: _Probe,
    targets: list[float],
    keyframes: list[float] | None,
    clock: _Clock,
    settings: Settings,
    skip_nonref: bool,
) -> Iterator[tuple[float, av.VideoFrame]]:
    """The frames on screen at `targets`; `keyframes` given: seek to them when it pays."""
    cursor: _Cursor | None = None
    for target in targets:
        if cursor is None:
            cursor = (
                _seek(container, probe, target, clock, settings, skip_nonref)
                if keyframes
                else _Cursor(container, probe, clock, settings, target, skip_nonref)
            )
        elif keyframes:
            kf = keyframes[max(bisect.bisect_right(keyframes, target + _EPS) - 1, 0)]
            if kf > cursor.position + _EPS and cursor.position < math.inf:
                cursor = _seek(container, probe, target, clock, settings, skip_nonref)
        found = cursor.frame_at(target)
        if found is None:
            return  # past the last decodable frame (truncated file)
        yield found


def _seek(
    container: av.container.InputContainer,
    probe: _Probe,
    target: float,
    clock: _Clock,
    settings: Settings,
    skip_nonref: bool,
) -> _Cursor:
    """Seek to the keyframe before `target` and return a cursor there.

    Containers index keyframes by decode time, which runs ahead of presentation time when
    B-frames are reordered, so a seek can land on a keyframe shown after `target`; formats
    without an index (MPEG-TS) seek by byte position and may land past every keyframe.
    Then seek again further back; after three misses give up (the caller decodes
    sequentially).
    """
    back_off = 0.0
    for _ in range(3):
        seek_s = max(target - back_off, 0.0)
        try:
            container.seek(probe.start_pts + int(seek_s / probe.time_base), stream=probe.stream, backward=True)
        except av.FFmpegError as exc:
            raise _SeekFailed(str(exc)) from exc
        cursor = _Cursor(container, probe, clock, settings, target, skip_nonref)
        if cursor.ahead is not None and cursor.ahead[0] <= target + _EPS:
            return cursor
        # Landed after the target, or where nothing decodes (no keyframe follows): go back.
        late = cursor.ahead[0] - target if cursor.ahead is not None else 0.0
        back_off = max(2 * back_off, late + 1.0)
    raise _SeekFailed(f"no keyframe found before {target:.3f} s")


class _SeekFailed(Exception):
    """The container refused to seek (raw streams, some damaged files)."""


class _SkipMiss(Exception):
    """A frame skipped as unneeded turned out to be a sampled one."""


# --- conversion ---------------------------------------------------------------------------


def _to_frames(
    picked: Iterator[tuple[float, av.VideoFrame]],
    probe: _Probe,
    targets: list[float] | None = None,
    sampled: set[float] | None = None,
    grid: Grid | None = None,
    grid_times: list[float] = (),
) -> tuple[list[Frame], int]:
    """Convert each kept frame to upright RGB as it is picked, so the decoder's buffers go
    back to it; frames picked for the grid only go to `grid.add`. Returns the sampled frames
    and the clockwise rotation applied."""
    frames: list[Frame] = []
    rotation = 0
    last: tuple[av.VideoFrame, np.ndarray] | None = None
    on_grid = {t: k for k, t in enumerate(grid_times)}
    for n, (t, frame) in enumerate(picked):
        if n == 0:
            rotation = _rotation_cw(frame, probe)
        target = targets[n] if targets is not None else None
        if grid is not None and target in on_grid:
            grid.add(on_grid[target], t, frame, rotation)
        if sampled is not None and target not in sampled:
            continue
        if last is not None and last[0] is frame:
            image = last[1]  # two targets within one frame's display time (low frame rate)
        else:
            image = frame.to_ndarray(format="rgb24")
            if rotation:
                # np.rot90 turns counter-clockwise for positive k.
                image = np.rot90(image, k=-rotation // 90)
            image = np.ascontiguousarray(image)
            last = (frame, image)
        frames.append(Frame(index=len(frames), time_s=t, image=image))
    return frames, rotation


def _rotation_cw(frame: av.VideoFrame, probe: _Probe) -> int:
    """Clockwise degrees (0, 90, 180, 270) to turn the stored frame upright."""
    try:
        ccw = frame.rotation  # from the display matrix side data
    except (AttributeError, ValueError):
        ccw = 0
    cw = (-round(ccw / 90) * 90) % 360 if ccw else probe.rotate_tag
    return cw if cw in (0, 90, 180, 270) else 0
