"""Encode RGB frames to a video file with PyAV: test fixtures, benchmark clips and demo videos."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Iterable, Sequence

import av
import numpy as np


def encode_clip(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: int = 25,
    codec: str = "libx264",
    gop: int | None = None,
    crf: int = 23,
    rotation: int = 0,
    times_s: Sequence[float] | None = None,
    bframes: int | None = None,
) -> Path:
    """Write RGB uint8 frames (all one size, even dimensions) to `path`; returns the path.

    The container follows the file name (.mp4, .mkv, .ts, ...). `gop` sets the keyframe
    interval (None: the encoder's default). `rotation` is the clockwise angle a player must
    turn the stored frames to show them upright, as a phone filming in portrait records it
    (the legacy `rotate` tag); it is written as the display matrix, so decoders must rotate
    the frames back. `times_s` gives each frame's presentation time for a variable frame
    rate clip (then `fps` is only the nominal rate). `bframes` caps consecutive B-frames
    (None: the encoder's default, or 0 for a variable frame rate).
    """
    path = Path(path)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=Fraction(fps))
        stream.pix_fmt = "yuv420p"
        options = {"crf": str(crf), "preset": "veryfast"}
        if gop is not None:
            stream.codec_context.gop_size = gop
            options["keyint_min"] = str(gop)
        if times_s is not None:
            # Millisecond timestamps carry the irregular times. No B-frames by default: with
            # some irregular times x264's decode timestamps make the mp4 muxer write a short
            # duration.
            stream.codec_context.time_base = Fraction(1, 1000)
            if bframes is None:
                bframes = 0
        if bframes is not None:
            stream.codec_context.max_b_frames = bframes
        stream.options = options
        if rotation:
            # PyAV's angle is counter-clockwise (as VideoFrame.rotation reads it back).
            stream.set_display_rotation(-rotation)
        for i, img in enumerate(frames):
            if i == 0:
                stream.height, stream.width = img.shape[:2]
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            if times_s is not None:
                frame.pts = round(times_s[i] * 1000)
                frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def no_face_frames(count: int = 75, seed: int = 0) -> list[np.ndarray]:
    """240x320 frames of moving coloured blocks over noise: a clip with no face anywhere."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(count):
        img = np.full((240, 320, 3), 40, np.uint8)
        x = (i * 4) % 280
        img[60:140, x : x + 40] = (200, 60, 60)
        img[150:200, 300 - x : 340 - x] = (60, 200, 90)
        frames.append(np.clip(img.astype(np.int16) + rng.integers(-12, 12, img.shape), 0, 255).astype(np.uint8))
    return frames
