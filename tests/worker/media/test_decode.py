"""decode_frames on real and generated clips: sampling, both strategies, rotation, VFR, bad inputs."""

from __future__ import annotations

import os
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from worker.media.decode import decode_frames, sample_times
from worker.media.encode import encode_clip
from worker.settings import Settings
from worker.types import ScanError

SETTINGS = Settings()


def _all_frames(path: Path) -> list[tuple[float, np.ndarray]]:
    """Every frame with its presentation time, decoded the plain way: the ground truth."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        start = s.start_time or 0
        return [(float((f.pts - start) * s.time_base), f.to_ndarray(format="rgb24")) for f in c.decode(s)]


def _on_screen(frames: list[tuple[float, np.ndarray]], t: float) -> tuple[float, np.ndarray]:
    return [f for f in frames if f[0] <= t + 1e-6][-1]


@pytest.fixture(scope="module")
def carphone_frames(carphone) -> list[np.ndarray]:
    return [img for _, img in _all_frames(carphone)]


@pytest.fixture(scope="module", params=[4, 250], ids=["gop4", "gop250"])
def gop_clip(request, carphone_frames, tmp_path_factory) -> tuple[Path, int]:
    """Carphone's 120 real frames at 25 fps (4.8 s) with a short or a long keyframe interval."""
    path = tmp_path_factory.mktemp("gop") / f"carphone_gop{request.param}.mp4"
    return encode_clip(path, carphone_frames, fps=25, gop=request.param), request.param


def test_sample_times_are_segment_centres():
    assert sample_times(4.8, 10) == pytest.approx([0.24 + 0.48 * i for i in range(10)])
    assert sample_times(1.0, 1) == [0.5]
    assert sample_times(0.0, 10) == []
    assert sample_times(5.0, 0) == []


def test_carphone_gives_ten_frames_spread_over_the_clip(carphone):
    frames, info = decode_frames(carphone, SETTINGS)

    assert (info.width, info.height, info.codec) == (176, 144, "h264")
    assert info.duration_s == pytest.approx(4.004, abs=0.01)  # 120 frames at 29.97 fps
    assert info.fps == pytest.approx(29.97, abs=0.01)
    assert [f.index for f in frames] == list(range(10))
    times = [f.time_s for f in frames]
    assert times == sorted(times) and len(set(times)) == 10
    assert 0 <= times[0] < 0.4 and 3.6 < times[-1] <= info.duration_s
    for f in frames:
        assert f.image.shape == (144, 176, 3) and f.image.dtype == np.uint8 and f.image.flags.c_contiguous
    # Each sampled frame is the one on screen at its target time, pixel for pixel.
    truth = _all_frames(carphone)
    for f, target in zip(frames, sample_times(info.duration_s, 10)):
        t, img = _on_screen(truth, target)
        assert f.time_s == pytest.approx(t)
        np.testing.assert_array_equal(f.image, img)


def test_strategy_follows_keyframe_spacing(gop_clip):
    path, gop = gop_clip
    _, info = decode_frames(path, SETTINGS)
    # Targets are 12 frames apart: with a keyframe every 4, seeking skips most frames; with
    # one keyframe for the whole clip, it would decode the same frames again and again.
    assert info.strategy == ("seek" if gop == 4 else "sequential")


@pytest.mark.parametrize("strategy", ["seek", "sequential"])
def test_both_strategies_give_the_frames_on_screen(gop_clip, strategy):
    path, _ = gop_clip
    frames, info = decode_frames(path, SETTINGS, strategy=strategy)

    assert info.strategy == strategy
    assert info.duration_s == pytest.approx(4.8, abs=0.05)
    truth = _all_frames(path)
    assert len(frames) == 10
    for f, target in zip(frames, sample_times(info.duration_s, 10)):
        t, img = _on_screen(truth, target)
        assert f.time_s == pytest.approx(t)
        np.testing.assert_array_equal(f.image, img)


def test_seek_with_b_frames_on_real_footage(bikes):
    """bikes.mp4 has B-frames and a keyframe every ~1.5 s: seeking must still land right."""
    seek, _ = decode_frames(bikes, SETTINGS, strategy="seek")
    sequential, _ = decode_frames(bikes, SETTINGS, strategy="sequential")
    assert [f.time_s for f in seek] == [f.time_s for f in sequential]
    assert [f.time_s for f in seek] == pytest.approx([0.48 + i for i in range(10)])
    for a, b in zip(seek, sequential):
        np.testing.assert_array_equal(a.image, b.image)


def test_parallel_decodes_match_serial_ones(carphone, bikes):
    """The worker decodes in a thread pool: PyAV releases the GIL, nothing may be shared."""
    from concurrent.futures import ThreadPoolExecutor

    paths = [carphone, bikes] * 3
    serial = [decode_frames(p, SETTINGS)[0] for p in paths[:2]]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(lambda p: decode_frames(p, SETTINGS)[0], paths))
    for i, frames in enumerate(parallel):
        expected = serial[i % 2]
        assert [f.time_s for f in frames] == [f.time_s for f in expected]
        for a, b in zip(frames, expected):
            np.testing.assert_array_equal(a.image, b.image)


def _marked(height: int, width: int) -> np.ndarray:
    """Grey frame, red square top-left, green square bottom-right."""
    img = np.full((height, width, 3), 128, np.uint8)
    img[:32, :32] = (230, 20, 20)
    img[-32:, -32:] = (20, 230, 20)
    return img


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotated_clip_comes_out_upright(tmp_path, rotation):
    upright = _marked(128, 96)  # portrait
    # What the camera stored: the upright picture turned counter-clockwise, so a player
    # must turn it clockwise by `rotation` (the display matrix) to show it upright.
    stored = np.ascontiguousarray(np.rot90(upright, k=rotation // 90))
    path = encode_clip(tmp_path / "rotated.mp4", [stored] * 10, fps=25, rotation=rotation)

    frames, info = decode_frames(path, SETTINGS.replace(frames_per_video=3))

    assert info.rotation == rotation
    assert (info.height, info.width) == (128, 96)
    img = frames[0].image
    assert img.shape == (128, 96, 3) and img.flags.c_contiguous
    assert np.abs(img[4:28, 4:28].astype(int) - (230, 20, 20)).mean() < 12  # red top-left
    assert np.abs(img[-28:-4, -28:-4].astype(int) - (20, 230, 20)).mean() < 12  # green bottom-right


def test_variable_frame_rate_times_follow_pts(tmp_path):
    times = [0.0, 0.04, 0.08, 0.5, 0.54, 1.5, 1.52, 1.54, 2.5, 3.1]
    levels = [20 + 22 * i for i in range(len(times))]
    images = [np.full((64, 96, 3), v, np.uint8) for v in levels]
    path = encode_clip(tmp_path / "vfr.mp4", images, fps=25, times_s=times)

    frames, info = decode_frames(path, SETTINGS.replace(frames_per_video=6))

    assert 3.1 <= info.duration_s < 3.3
    for f, target in zip(frames, sample_times(info.duration_s, 6)):
        i = max(i for i, t in enumerate(times) if t <= target + 1e-6)
        assert f.time_s == pytest.approx(times[i], abs=1e-3)
        assert abs(float(f.image.mean()) - levels[i]) < 4
    # index / fps would have put frame 8 at 0.32 s; pts put it at 2.5 s.
    assert [round(f.time_s, 2) for f in frames] == [0.08, 0.54, 0.54, 1.54, 1.54, 2.5]


@pytest.mark.parametrize("strategy", ["seek", "sequential"])
def test_gap_in_a_vfr_clip_shows_the_last_frame_before_it(tmp_path, carphone_frames, strategy):
    """Real footage with a 1.6 s pause after frame 61, a B-frame no other frame refers to.

    The decoder skips such frames while far from the next target; targets inside the pause
    need exactly that frame, so the decode must notice and take it after all.
    """
    times = [0.04 * i for i in range(62)] + [4.0 + 0.04 * i for i in range(58)]
    path = encode_clip(tmp_path / "pause.mp4", carphone_frames, fps=25, times_s=times, bframes=3)
    truth = _all_frames(path)
    assert [t for t, _ in truth] == pytest.approx(times)

    frames, info = decode_frames(path, SETTINGS, strategy=strategy)

    targets = sample_times(info.duration_s, 10)
    assert sum(2.44 < t < 4.0 for t in targets) == 2  # two targets fall in the pause
    for f, target in zip(frames, targets):
        t, img = _on_screen(truth, target)
        assert f.time_s == pytest.approx(t)
        np.testing.assert_array_equal(f.image, img)


def test_missing_duration_falls_back_to_a_sequential_pass(tmp_path):
    """A raw H.264 stream states no duration and cannot seek: timestamps come from a demux pass."""
    images = [np.full((64, 96, 3), 2 * i, np.uint8) for i in range(100)]
    path = encode_clip(tmp_path / "raw.h264", images, fps=25)
    with av.open(str(path)) as c:
        assert c.streams.video[0].duration is None and c.duration is None

    frames, info = decode_frames(path, SETTINGS, strategy="seek")

    assert info.strategy == "sequential"
    assert info.duration_s == pytest.approx(4.0)
    assert [round(f.time_s, 2) for f in frames] == pytest.approx([0.2 + 0.4 * i for i in range(10)])
    assert [round(f.image.mean()) for f in frames] == pytest.approx([10 + 20 * i for i in range(10)], abs=2)


def test_truncated_matroska_returns_the_frames_before_the_cut(tmp_path):
    images = [np.full((64, 96, 3), 2 * i, np.uint8) for i in range(100)]
    whole = encode_clip(tmp_path / "whole.mkv", images, fps=25).read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole[: len(whole) // 2])
    last_time = _all_frames(cut)[-1][0]
    assert last_time < 3.5  # the cut really removed frames

    for strategy in ("seek", "sequential"):
        frames, info = decode_frames(cut, SETTINGS, strategy=strategy)
        assert info.duration_s == pytest.approx(4.0)  # the header still claims all of it
        assert 0 < len(frames) < 10
        assert all(f.time_s <= last_time for f in frames)
        assert [f.index for f in frames] == list(range(len(frames)))


# --- bad inputs -----------------------------------------------------------------------------


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=44100)
        for i in range(40):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 44100
            frame.pts = i * 1024
            frame.time_base = Fraction(1, 44100)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _with_cover_art(path: Path, video_frames: int = 0) -> Path:
    """An mp4 with an album-cover picture, AAC audio, and optionally a real video track."""
    with av.open(str(path), "w") as out:
        cover = out.add_stream("mjpeg", rate=1)
        cover.width, cover.height, cover.pix_fmt = 96, 64, "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
        video = None
        if video_frames:
            video = out.add_stream("libx264", rate=25)
            video.width, video.height, video.pix_fmt = 96, 64, "yuv420p"
        audio = out.add_stream("aac", rate=44100)
        for packet in cover.encode(av.VideoFrame.from_ndarray(np.full((64, 96, 3), 250, np.uint8), format="rgb24")):
            out.mux(packet)
        for packet in cover.encode():
            out.mux(packet)
        for i in range(video_frames):
            frame = av.VideoFrame.from_ndarray(np.full((64, 96, 3), 4 * i, np.uint8), format="rgb24")
            for packet in video.encode(frame):
                out.mux(packet)
        if video is not None:
            for packet in video.encode():
                out.mux(packet)
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 44100, i * 1024, Fraction(1, 44100)
            for packet in audio.encode(frame):
                out.mux(packet)
        for packet in audio.encode():
            out.mux(packet)
    return path


def test_cover_art_is_not_the_video(tmp_path):
    path = _with_cover_art(tmp_path / "with_cover.mp4", video_frames=50)
    frames, info = decode_frames(path, SETTINGS.replace(frames_per_video=5))
    assert info.codec == "h264" and info.duration_s == pytest.approx(2.0)
    assert [round(float(f.image.mean())) for f in frames] == pytest.approx([20, 60, 100, 140, 180], abs=3)  # frames 5, 15, .., 45


def _truncated_mp4(path: Path) -> Path:
    whole = encode_clip(path.with_name("whole.mp4"), [np.full((64, 96, 3), 90, np.uint8)] * 50).read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # the index (moov) is written last: gone
    return path


BAD_INPUTS = {
    "zero_bytes": (lambda p, _: (p.write_bytes(b""), p)[1], "unreadable_media", "empty"),
    "random_bytes": (
        lambda p, _: (p.write_bytes(np.random.default_rng(1).bytes(200_000)), p)[1],
        "unreadable_media",
        "not a readable video",
    ),
    "text_as_mp4": (lambda p, _: (p.write_text("just some notes\n" * 200), p)[1], "unreadable_media", "not a readable video"),
    "text_as_txt": (
        lambda p, _: (p.with_suffix(".txt").write_text("just some notes\n" * 200), p.with_suffix(".txt"))[1],
        "unsupported_format",
        "not a video container",
    ),
    "png_renamed_mp4": (lambda p, astronaut: shutil.copy(astronaut, p), "unsupported_format", "not a video container"),
    "audio_only": (lambda p, _: _audio_only(p), "no_video_stream", "only audio"),
    "music_with_cover_art": (lambda p, _: _with_cover_art(p), "no_video_stream", "only cover art and audio"),
    "truncated_mp4": (lambda p, _: _truncated_mp4(p), "unreadable_media", "not a readable video"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_a_scan_error_with_a_reason(name, tmp_path, astronaut):
    make, code, phrase = BAD_INPUTS[name]
    path = Path(make(tmp_path / "input.mp4", astronaut))
    with pytest.raises(ScanError) as err:
        decode_frames(path, SETTINGS)
    assert err.value.code == code
    assert phrase in err.value.reason
    assert not err.value.transient


def test_missing_file_is_a_scan_error(tmp_path):
    with pytest.raises(ScanError) as err:
        decode_frames(tmp_path / "nowhere.mp4", SETTINGS)
    assert err.value.code == "unreadable_media" and "nowhere.mp4" in err.value.reason


def test_huge_resolution_is_refused_before_decoding(tmp_path):
    # 4096x2304 is over the default cap of 3840x2160 pixels; two flat frames keep it tiny.
    path = encode_clip(tmp_path / "huge.mp4", [np.full((2304, 4096, 3), 90, np.uint8)] * 2)
    # A decode would blow the 1 ns budget: refusing first means the size check ran first.
    with pytest.raises(ScanError) as err:
        decode_frames(path, SETTINGS.replace(decode_timeout_s=1e-9))
    assert err.value.code == "too_large"
    assert "4096x2304" in err.value.reason


def test_lowered_pixel_cap_refuses_carphone(carphone):
    with pytest.raises(ScanError) as err:
        decode_frames(carphone, SETTINGS.replace(max_pixels=100 * 100))
    assert err.value.code == "too_large" and "176x144" in err.value.reason


def test_too_long_from_the_stated_duration(carphone):
    with pytest.raises(ScanError) as err:
        decode_frames(carphone, SETTINGS.replace(max_duration_s=2.0))
    assert err.value.code == "too_long" and "4.0 s" in err.value.reason


def test_too_long_when_the_duration_is_only_found_by_reading(tmp_path):
    path = encode_clip(tmp_path / "raw.h264", [np.full((64, 96, 3), 50, np.uint8)] * 100, fps=25)
    with pytest.raises(ScanError) as err:
        decode_frames(path, SETTINGS.replace(max_duration_s=2.0))
    assert err.value.code == "too_long"


def test_decode_timeout(bikes):
    with pytest.raises(ScanError) as err:
        decode_frames(bikes, SETTINGS.replace(decode_timeout_s=1e-9))
    assert err.value.code == "decode_timeout" and "limit" in err.value.reason


# --- inputs cannot reach beyond their bytes -------------------------------------------------


class _OpenWatch:
    """Reports whether anything opened `path` since the watch began (Linux inotify IN_OPEN)."""

    def __init__(self, path: Path):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0 and libc.inotify_add_watch(self.fd, str(path).encode(), 0x20) >= 0

    def opened(self) -> bool:
        try:
            return len(os.read(self.fd, 4096)) > 0
        except BlockingIOError:
            return False

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def outside_segment(tmp_path):
    """A real video outside the allowed folder, and the allowed folder."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "root").mkdir()
    frames = [np.full((64, 96, 3), 10 * i, np.uint8) for i in range(25)]
    return encode_clip(tmp_path / "outside" / "secret.ts", frames, fps=25), tmp_path / "root"


@pytest.mark.parametrize("name", ["list.m3u8", "list.mp4", "clip"])
def test_hls_playlist_pointing_outside_is_refused_and_the_target_never_opened(outside_segment, name):
    from tests.fixtures.hostile_media import hls_playlist

    segment, root = outside_segment
    playlist = hls_playlist(root / name, segment)
    if name == "list.m3u8":
        # The attack is real: FFmpeg left to itself follows the playlist to the outside file.
        watch = _OpenWatch(segment)
        with av.open(str(playlist)) as c:
            assert c.format.name == "hls" and next(c.decode(video=0)).width == 96
        assert watch.opened()
        watch.close()
    watch = _OpenWatch(segment)
    with pytest.raises(ScanError) as err:
        decode_frames(playlist, SETTINGS)
    # Under another name FFmpeg does not even take it for a playlist: just not a video.
    assert err.value.code == ("unsupported_format" if name.endswith(".m3u8") else "unreadable_media")
    assert not watch.opened()
    watch.close()


def test_concat_list_is_refused(outside_segment):
    from tests.fixtures.hostile_media import concat_list

    segment, root = outside_segment
    watch = _OpenWatch(segment)
    with pytest.raises(ScanError) as err:
        decode_frames(concat_list(root / "list.ffconcat", segment), SETTINGS)
    assert err.value.code == "unsupported_format"
    assert not watch.opened()


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".avi", ".ts", ".flv", ".webm", ".mov", ".mpg"])
def test_allowed_containers_still_decode(tmp_path, suffix):
    codec = {".webm": "libvpx-vp9", ".flv": "flv", ".mpg": "mpeg2video", ".avi": "mpeg4"}.get(suffix, "libx264")
    frames = [np.full((64, 96, 3), 8 * i, np.uint8) for i in range(25)]
    got, info = decode_frames(encode_clip(tmp_path / f"clip{suffix}", frames, fps=25, codec=codec), SETTINGS)
    assert len(got) == SETTINGS.frames_per_video and info.width == 96


def test_frames_larger_than_the_header_claims_are_refused_by_the_decoder(tmp_path):
    """A raw H.264 stream whose frame size grows mid-stream: the header (first frames) passes the
    pixel check, and FFmpeg's decoder, given the same limit, refuses the larger frames."""
    small = encode_clip(tmp_path / "a.h264", [np.full((64, 128, 3), 60, np.uint8)] * 25, fps=25)
    large = encode_clip(tmp_path / "b.h264", [np.full((150, 200, 3), 200, np.uint8)] * 25, fps=25)
    joined = tmp_path / "grows.h264"
    joined.write_bytes(small.read_bytes() + large.read_bytes())
    roomy = SETTINGS.replace(max_pixels=100_000)
    shapes = {f.image.shape for f in decode_frames(joined, roomy, strategy="sequential")[0]}
    assert shapes == {(64, 128, 3), (150, 200, 3)}  # without a limit in the way, the larger frames decode
    frames, info = decode_frames(joined, SETTINGS.replace(max_pixels=128 * 64), strategy="sequential")
    assert (info.width, info.height) == (128, 64)
    assert {f.image.shape for f in frames} == {(64, 128, 3)}  # what came before the large frames
