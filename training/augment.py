"""Training augmentations in numpy/OpenCV (torchvision does not import beside this torch).

They mimic what happens to a video between a camera and the detector: recompression,
blur and downscaling, colour and exposure changes, mirroring. The self-blend traces a
detector should learn survive mild versions of these; learning to ignore them is what
keeps a model from keying on one data set's encoder settings.

`Augment.cross_source()` is the stronger set the demo trains with: every source's look
(resolution, sharpness, sensor noise, compression, colour or greyscale) is drawn at random
for every crop, real or fake, so none of them tells a source apart, and a model that keys
on "looks like the training footage" has nothing to key on.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class Augment:
    """Callable `(rgb_uint8, rng) -> rgb_uint8`; each transform fires with its probability."""

    flip: float = 0.5
    jpeg: float = 0.5
    jpeg_quality: tuple[int, int] = (40, 95)
    blur: float = 0.2
    downscale: float = 0.2
    downscale_range: tuple[float, float] = (0.5, 0.9)
    colour: float = 0.5
    grey: float = 0.0
    noise: float = 0.0
    sharpen: float = 0.0
    cast: float = 0.0  # a global colour cast: each channel's own gain and offset (`colour_cast`)
    field: float = 0.0  # a smooth colour field across the crop: each channel's own slowly varying gain (`colour_field`)
    # a source's own look, given to a real crop BEFORE it is blended (`source_look`): heavy compression at low
    # resolution, as footage streamed at a few kbit/s has; a fake made from such a crop keeps it under the blend
    source: float = 0.0

    @classmethod
    def cross_source(cls) -> "Augment":
        # mild enough that a 64 px blend boundary survives most draws
        return cls(jpeg=0.4, jpeg_quality=(50, 95), blur=0.15, downscale=0.25, downscale_range=(0.5, 0.9),
                   colour=0.6, grey=0.2, noise=0.2, sharpen=0.1)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() < self.flip:
            image = image[:, ::-1]
        if rng.random() < self.colour:
            image = colour_jitter(image, rng)
        if rng.random() < self.cast:
            image = colour_cast(image, rng)
        if rng.random() < self.field:
            image = np.clip(image * colour_field(image.shape[:2], rng), 0, 255).astype(np.uint8)
        if rng.random() < self.grey:
            image = np.repeat(cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
        if rng.random() < self.blur:
            image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.4, 1.2))
        elif rng.random() < self.sharpen:
            soft = cv2.GaussianBlur(image, (0, 0), 1.0).astype(np.float32)
            image = np.clip(image * 1.6 - soft * 0.6, 0, 255).astype(np.uint8)
        if rng.random() < self.downscale:
            image = down_up(image, rng.uniform(*self.downscale_range))
        if rng.random() < self.noise:
            image = np.clip(image + rng.normal(0, rng.uniform(2, 8), image.shape), 0, 255).astype(np.uint8)
        if rng.random() < self.jpeg:
            image = jpeg(image, int(rng.integers(*self.jpeg_quality)))
        return np.ascontiguousarray(image)


def source_look(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A crop as a badly compressed low-resolution source would hand it over: scaled down to 30-70%,
    JPEG at quality 8-35 (blocks, lost detail, smeared chroma), scaled back up."""
    h, w = image.shape[:2]
    factor = rng.uniform(0.3, 0.7)
    small = cv2.resize(image, (max(8, int(w * factor)), max(8, int(h * factor))), interpolation=cv2.INTER_AREA)
    return cv2.resize(jpeg(small, int(rng.integers(8, 36))), (w, h), interpolation=cv2.INTER_LINEAR)


def colour_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = image.astype(np.float32)
    mean = x.mean()
    x = (x - mean) * rng.uniform(0.8, 1.2) + mean * rng.uniform(0.8, 1.2)  # contrast, brightness
    grey = x.mean(axis=2, keepdims=True)
    x = grey + (x - grey) * rng.uniform(0.8, 1.2)  # saturation
    return np.clip(x, 0, 255).astype(np.uint8)


def colour_cast(image: np.ndarray, rng: np.random.Generator, gain: float = 0.25, offset: float = 20.0) -> np.ndarray:
    """The whole crop's colour changed as a camera's white balance and exposure would: each channel
    times its own gain (1 +- `gain`) plus its own offset (+- `offset` grey levels)."""
    x = image.astype(np.float32) * rng.uniform(1 - gain, 1 + gain, 3) + rng.uniform(-offset, offset, 3)
    return np.clip(x, 0, 255).astype(np.uint8)


def colour_field(shape: tuple[int, int], rng: np.random.Generator, blobs: int = 3,
                 strength: float = 0.25) -> np.ndarray:
    """A smooth per-channel gain field (H, W, 3), around 1: a random linear gradient plus `blobs` wide
    Gaussian blobs, each channel its own, so the colour varies slowly across the image like skin
    under real light; only low spatial frequencies (blob widths a quarter of the image and more)."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    y, x = y / max(h - 1, 1), x / max(w - 1, 1)
    field = np.ones((h, w, 3), np.float32)
    for c in range(3):
        gy, gx = rng.uniform(-strength, strength, size=2)
        field[..., c] += gy * (y - 0.5) + gx * (x - 0.5)
        for _ in range(blobs):
            cy, cx = rng.uniform(0.1, 0.9, size=2)
            sigma = rng.uniform(0.25, 0.5)
            field[..., c] += rng.uniform(-strength, strength) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2))
    return np.clip(field, 0.3, 1.7)


def down_up(image: np.ndarray, factor: float) -> np.ndarray:
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(1, int(w * factor)), max(1, int(h * factor))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) if ok else image
