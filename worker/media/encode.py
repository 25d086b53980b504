"""Encode RGB frames to a video file with PyAV: test fixtures, benchmark clips and demo videos."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Iterable

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
) -> Path:
    """Write RGB uint8 frames (all one size, even dimensions) to `path`; returns the path.

    `gop` sets the keyframe interval (None: the encoder's default); `rotation` writes the
    display-matrix rotation a phone would, so decoders must rotate the frames back.
    """
    path = Path(path)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=Fraction(fps))
        stream.pix_fmt = "yuv420p"
        options = {"crf": str(crf), "preset": "veryfast"}
        if gop is not None:
            stream.codec_context.gop_size = gop
            options["keyint_min"] = str(gop)
        stream.options = options
        first = True
        for img in frames:
            if first:
                stream.height, stream.width = img.shape[:2]
                first = False
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        if rotation:
            # PyAV exposes the display matrix as side data on the stream only in newer
            # builds; metadata "rotate" is what FFmpeg's muxers honour.
            stream.metadata["rotate"] = str(rotation)
    return path
