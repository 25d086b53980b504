"""The smooth colour field the demo trains with since v6 (`Augment(field=...)`, docs/training.md)."""

from __future__ import annotations

import numpy as np

from training import demo
from training.augment import Augment, colour_field


def _standardised(image: np.ndarray) -> np.ndarray:
    """As the model does (`--standardise-input`): each channel to mean 0, std 1 over the crop."""
    x = image.astype(np.float64)
    return (x - x.mean(axis=(0, 1))) / (x.std(axis=(0, 1)) + 1e-6)


def _high_frequency_share(channel: np.ndarray, cutoff: float = 0.125) -> float:
    """Share of the (mean-removed, Hann-windowed: no wrap-around edge) energy above `cutoff` cycles per pixel."""
    window = np.outer(np.hanning(channel.shape[0]), np.hanning(channel.shape[1]))
    spectrum = np.abs(np.fft.fft2((channel - channel.mean()) * window)) ** 2
    fy, fx = np.meshgrid(np.fft.fftfreq(channel.shape[0]), np.fft.fftfreq(channel.shape[1]), indexing="ij")
    return float(spectrum[np.hypot(fy, fx) > cutoff].sum() / spectrum.sum())


def test_the_field_is_smooth_around_one_and_new_at_every_draw():
    rng = np.random.default_rng(0)
    fields = [colour_field((164, 164), rng) for _ in range(20)]
    for field in fields:
        assert field.shape == (164, 164, 3) and 0.3 <= field.min() and field.max() <= 1.7
        assert abs(field.mean() - 1) < 0.35
        for c in range(3):
            assert _high_frequency_share(field[..., c]) < 1e-3  # low spatial frequencies only
        assert np.ptp(field[..., 0] / field[..., 2]) > 0.05  # the colour (not just the brightness) varies across it
    assert not np.allclose(fields[0], fields[1])


def test_the_field_leaves_colour_that_standardisation_does_not_cancel():
    """v5's training faces: grey photos with one uniform tint, a per-channel gain the model's
    standardisation cancels (all three channels the same grey); the field's colour survives it."""
    rng = np.random.default_rng(1)
    grey = (np.random.default_rng(2).random((64, 64)) * 200 + 20).astype(np.uint8)
    uniform = np.clip(np.repeat(grey[..., None], 3, axis=2) * np.array([1.0, 0.8, 0.6]), 0, 255).astype(np.uint8)
    s = _standardised(uniform)
    assert np.abs(s[..., 0] - s[..., 2]).mean() < 0.02  # colourless to the model
    s = _standardised(np.clip(uniform * colour_field(grey.shape, rng), 0, 255))
    assert np.abs(s[..., 0] - s[..., 2]).mean() > 0.05  # colour left after standardisation


def test_the_demo_trains_with_the_field_on_half_the_crops():
    assert demo.AUGMENT.field == 0.5 and demo.STANDARDISE_INPUT
    assert int(demo.DEMO_VERSION[1:]) >= 6  # kept by every recipe since v6


def test_the_augmentation_is_off_by_default_and_keeps_the_picture():
    assert Augment().field == 0.0
    image = np.full((64, 64, 3), 128, np.uint8)
    out = Augment(flip=0, jpeg=0, blur=0, downscale=0, colour=0, field=1.0)(image, np.random.default_rng(0))
    assert out.shape == image.shape and out.dtype == np.uint8 and not np.array_equal(out, image)
    for c in range(3):
        assert _high_frequency_share(out[..., c].astype(np.float64)) < 0.01
