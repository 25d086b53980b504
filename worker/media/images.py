"""Still images (PNG, JPEG, WebP, BMP): told apart from videos by their bytes, sized from
their header, and decoded only when the header's size is within `max_pixels`.

A file's name says nothing about its content (downloads carry no suffix at all, and an
attacker names files as they like), so `sniff` looks at the magic bytes. The size check
reads the header the decoder itself will trust, so a PNG that declares 30000x30000 in a
few hundred bytes is refused before any pixel buffer exists.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from worker.settings import Settings
from worker.types import Frame, ScanError, VideoInfo

# How much of the file the sniffers and header parsers may read (JPEG metadata segments
# before the frame header can be long: EXIF with a thumbnail, ICC profiles).
_HEAD_BYTES = 1 << 20


def sniff(head: bytes) -> str | None:
    """'png', 'jpeg', 'webp' or 'bmp' when `head` starts like one; None otherwise."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"BM") and len(head) >= 26:
        return "bmp"
    return None


def sniff_file(path: Path) -> str | None:
    with open(path, "rb") as f:
        return sniff(f.read(32))


def image_size(path: Path, kind: str) -> tuple[int, int]:
    """(width, height) as the header of a `kind` image declares it, without decoding."""
    with open(path, "rb") as f:
        head = f.read(_HEAD_BYTES)
    size = {"png": _png_size, "jpeg": _jpeg_size, "webp": _webp_size, "bmp": _bmp_size}[kind](head)
    if size is None or size[0] <= 0 or size[1] <= 0:
        raise ScanError("unreadable_media", f"{kind} image header is damaged or names no size")
    return size


def read_image(path: Path, settings: Settings, kind: str | None = None) -> tuple[list[Frame], VideoInfo]:
    """The image as one upright RGB frame; `too_large` from the header before decoding."""
    kind = kind or sniff_file(path)
    if kind is None:
        raise ScanError("unreadable_media", f"{path.name} is not a PNG, JPEG, WebP or BMP image")
    width, height = image_size(path, kind)
    if width * height > settings.max_pixels:
        raise ScanError(
            "too_large",
            f"image size {width}x{height} ({width * height} pixels) is over the limit of {settings.max_pixels}",
        )
    # OpenCV's own pixel cap (read once, when its image codecs first run) backs up the header
    # check; in the sandbox child the variable is set before cv2 is imported.
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(settings.max_pixels))
    import cv2

    try:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        if exc.code == cv2.Error.StsNoMem:
            raise ScanError("out_of_memory", f"decoding the {width}x{height} image ran out of memory") from exc
        raise ScanError("unreadable_media", f"{path.name} is not a readable {kind} image") from exc
    if img is None:
        raise ScanError("unreadable_media", f"{path.name} is not a readable {kind} image")
    rgb = np.ascontiguousarray(img[:, :, ::-1])
    h, w = rgb.shape[:2]
    return [Frame(0, 0.0, rgb)], VideoInfo(width=w, height=h, codec=kind, strategy="image")


# --- headers -------------------------------------------------------------------------------


def _png_size(head: bytes) -> tuple[int, int] | None:
    # Signature (8), then the IHDR chunk: length (4), b"IHDR", width (4), height (4).
    if len(head) < 24 or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


# Start-of-frame markers (baseline, extended, progressive, lossless, arithmetic...): not
# DHT (C4), JPG (C8) or DAC (CC), which share the range.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 4 <= len(head):
        if head[i] != 0xFF:
            return None
        marker = head[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, or scan data before any frame header
            return None
        (length,) = struct.unpack(">H", head[i + 2 : i + 4])
        if marker in _SOF:
            if i + 9 > len(head):
                return None
            height, width = struct.unpack(">HH", head[i + 5 : i + 9])
            return width, height
        if length < 2:
            return None
        i += 2 + length
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8 " and len(head) >= 30 and head[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", head[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and len(head) >= 25 and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(head) >= 30:
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    return None


def _bmp_size(head: bytes) -> tuple[int, int] | None:
    (dib,) = struct.unpack("<I", head[14:18])
    if dib == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        return struct.unpack("<HH", head[18:22])
    if dib >= 40 and len(head) >= 26:
        width, height = struct.unpack("<ii", head[18:26])
        return width, abs(height)  # negative height: rows stored top-down
    return None
