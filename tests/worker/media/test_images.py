"""Still images: told by their bytes, sized from the header, refused before decoding when too large."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest

from tests.fixtures.hostile_media import png_header_only
from worker.media.images import image_size, read_image, sniff, sniff_file
from worker.settings import Settings
from worker.types import ScanError

SETTINGS = Settings()  # max_pixels 3840x2160


def _encoded(tmp_path, ext, w=96, h=64, params=()):
    img = np.random.default_rng(0).integers(0, 255, (h, w, 3), np.uint8)
    ok, data = cv2.imencode(ext, img, list(params))
    assert ok
    path = tmp_path / f"image{ext}"
    path.write_bytes(data.tobytes())
    return path


@pytest.mark.parametrize(
    "ext,kind,params",
    [
        (".png", "png", ()),
        (".jpg", "jpeg", ()),
        (".jpg", "jpeg", (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)),
        (".bmp", "bmp", ()),
        (".webp", "webp", (cv2.IMWRITE_WEBP_QUALITY, 80)),  # lossy: VP8
        (".webp", "webp", (cv2.IMWRITE_WEBP_QUALITY, 101)),  # lossless: VP8L
    ],
)
def test_header_size_matches_what_the_decoder_produces(tmp_path, ext, kind, params):
    path = _encoded(tmp_path, ext, 97 if kind != "jpeg" else 96, 61, params)
    assert sniff_file(path) == kind
    frames, info = read_image(path, SETTINGS)
    h, w = frames[0].image.shape[:2]
    assert image_size(path, kind) == (w, h) == (info.width, info.height)


def test_jpeg_with_exif_thumbnail_is_sized_by_its_own_frame_header(tmp_path):
    """A metadata segment (APP1) carrying another JPEG's frame header is skipped by its length."""
    inner = _encoded(tmp_path, ".jpg", 800, 8).read_bytes()  # another frame header inside the APP1 payload
    outer = _encoded(tmp_path, ".jpg", 96, 64).read_bytes()
    app1 = b"\xff\xe1" + struct.pack(">H", len(inner) + 2) + inner
    path = tmp_path / "exif.jpg"
    path.write_bytes(outer[:2] + app1 + outer[2:])
    assert image_size(path, "jpeg") == (96, 64)


@pytest.mark.parametrize("side", [16000, 30000])
def test_png_declaring_a_huge_size_is_refused_from_the_header(tmp_path, side):
    path = png_header_only(tmp_path / "big.png", side, side)
    assert path.stat().st_size < 1000
    with pytest.raises(ScanError) as err:
        read_image(path, SETTINGS)
    assert err.value.code == "too_large" and f"{side}x{side}" in err.value.reason


def test_huge_jpeg_bmp_webp_headers_are_refused(tmp_path):
    jpeg = bytearray(_encoded(tmp_path, ".jpg").read_bytes())
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)
    bmp = bytearray(_encoded(tmp_path, ".bmp").read_bytes())
    bmp[18:26] = struct.pack("<ii", 50000, -50000)
    webp = bytearray(_encoded(tmp_path, ".webp", params=(cv2.IMWRITE_WEBP_QUALITY, 101)).read_bytes())
    webp[21:25] = (0x3FFF | (0x3FFF << 14)).to_bytes(4, "little")  # 16384x16384 lossless
    for name, data in [("j.jpg", jpeg), ("b.bmp", bmp), ("w.webp", webp)]:
        path = tmp_path / name
        path.write_bytes(bytes(data))
        with pytest.raises(ScanError) as err:
            read_image(path, SETTINGS)
        assert err.value.code == "too_large", name


def test_damaged_headers_are_unreadable(tmp_path):
    for name, data in [
        ("short.png", b"\x89PNG\r\n\x1a\n\x00\x00"),
        ("nosof.jpg", b"\xff\xd8\xff\xda\x00\x08" + b"\x00" * 50),
        ("zero.png", png_header_only(tmp_path / "z.png", 0, 10).read_bytes()),
    ]:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ScanError) as err:
            read_image(path, SETTINGS)
        assert err.value.code == "unreadable_media", name


def test_sniff_looks_at_bytes_only():
    assert sniff(b"\x89PNG\r\n\x1a\n....") == "png"
    assert sniff(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp"
    assert sniff(b"RIFF\x00\x00\x00\x00AVI LIST") is None  # an AVI video
    assert sniff(b"\x00\x00\x00\x18ftypmp42") is None
