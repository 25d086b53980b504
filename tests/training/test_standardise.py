"""Per-crop input standardisation inside the model (demo recipe v5): a global colour cast of a
crop does not change its score, in torch, after a save and reload, and in the exported ONNX
graph run by the worker's own classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.augment import Augment, colour_cast
from training.export import onnx_parity, ort_cpu_session
from training.untrained_bundle import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    STANDARDISE_KEY,
    build_model,
    export_onnx,
    load_trained,
    standardise,
)
from worker.models.classifier import FakeClassifier, norm_constants, normalise

GAIN = torch.tensor([1.3, 0.7, 1.1]).reshape(1, 3, 1, 1)
OFFSET = torch.tensor([0.4, -0.6, 0.2]).reshape(1, 3, 1, 1)


def _logits(model, x):
    with torch.no_grad():
        return model(pixel_values=x).logits


def _crops(n=4, size=64, seed=0):
    """Smooth uint8 RGB crops in the middle of the range (a cast keeps them unclipped)."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.integers(70, 180, (n, 8, 8, 3)).astype(np.uint8)
    return np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_CUBIC) for c in small])


def test_standardise_gives_each_crop_channel_mean_0_std_1():
    x = torch.randn(3, 3, 16, 16) * 2 + 5
    y = standardise(x)
    assert torch.allclose(y.mean(dim=(2, 3)), torch.zeros(3, 3), atol=1e-5)
    assert torch.allclose(y.std(dim=(2, 3), unbiased=False), torch.ones(3, 3), atol=1e-3)


def test_a_global_per_channel_gain_and_offset_does_not_change_the_output():
    x = torch.randn(2, 3, 64, 64)
    model = build_model("atto", seed=0, standardise_input=True)
    np.testing.assert_allclose(_logits(model, x * GAIN + OFFSET).numpy(), _logits(model, x).numpy(), atol=1e-3)
    # the same weights without the step: the cast does move the logits (the test can fail)
    plain = build_model("atto", seed=0)
    assert float((_logits(plain, x * GAIN + OFFSET) - _logits(plain, x)).abs().max()) > 1e-2
    # a local change (one half of the crop brighter) is not cancelled
    local = x.clone()
    local[:, :, :32] += 0.5
    assert float((_logits(model, local) - _logits(model, x)).abs().max()) > 1e-3


def test_a_saved_model_reloads_with_its_standardisation(tmp_path):
    model = build_model("atto", seed=1, standardise_input=True)
    model.save_pretrained(tmp_path)
    again = load_trained(tmp_path)
    assert getattr(again.config, STANDARDISE_KEY) == {"eps": pytest.approx(1e-4)}
    x = torch.randn(2, 3, 64, 64)
    np.testing.assert_allclose(_logits(again, x * GAIN + OFFSET).numpy(), _logits(model, x).numpy(), atol=1e-3)
    # a model saved without it loads without it (old checkpoints are unchanged)
    build_model("atto", seed=1).save_pretrained(tmp_path / "plain")
    plain = load_trained(tmp_path / "plain")
    assert getattr(plain.config, STANDARDISE_KEY, None) is None
    assert float((_logits(plain, x * GAIN + OFFSET) - _logits(plain, x)).abs().max()) > 1e-2


def test_the_onnx_graph_contains_it_and_the_worker_classifier_scores_a_cast_crop_the_same(tmp_path):
    """Export parity through the worker's FakeClassifier, and cast-invariance of its scores on uint8 crops."""
    import types

    from worker.settings import Settings
    from worker.types import ModelInfo

    model = build_model("atto", seed=2, standardise_input=True)
    onnx_path = tmp_path / "model.onnx"
    export_onnx(model, onnx_path, 64)
    crops = _crops()
    parity = onnx_parity(model, onnx_path, crops, IMAGENET_MEAN, IMAGENET_STD)
    assert parity.max_abs_prob_diff < 1e-4 and parity.batch_invariance < 1e-4

    bundle = types.SimpleNamespace(model_path=onnx_path, info=ModelInfo("t", "0", ""), input_size=64,
                                   mean=IMAGENET_MEAN, std=IMAGENET_STD, fake_index=1)
    classifier = FakeClassifier(bundle, Settings(), session=ort_cpu_session(onnx_path))
    cast = np.clip(crops.astype(np.float32) * [1.2, 0.85, 1.05] + [10, -15, 5], 0, 255).round().astype(np.uint8)
    x, x_cast = classifier.preprocess(crops), classifier.preprocess(cast)
    assert np.abs(x - x_cast).max() > 0.1  # the worker's input differs ...
    got, got_cast = classifier.forward(x), classifier.forward(x_cast)
    np.testing.assert_allclose(got_cast, got, atol=2e-2)  # ... the logits do not (uint8 rounding aside)
    # the ONNX of the same weights without the step does see the cast
    plain = build_model("atto", seed=2)
    export_onnx(plain, tmp_path / "plain.onnx", 64)
    session = ort_cpu_session(tmp_path / "plain.onnx")
    base = session.run(None, {"pixel_values": normalise(crops, *norm_constants(IMAGENET_MEAN, IMAGENET_STD))})[0]
    moved = session.run(None, {"pixel_values": normalise(cast, *norm_constants(IMAGENET_MEAN, IMAGENET_STD))})[0]
    assert np.abs(moved - base).max() > 2e-2


def test_colour_cast_augmentation_changes_each_channel_by_its_own_gain_and_offset():
    crop = _crops(1)[0]
    out = colour_cast(crop, np.random.default_rng(0))
    assert out.shape == crop.shape and out.dtype == np.uint8
    # per channel an affine map of the input (before rounding): fit it and check it is not the identity
    fits = [np.polyfit(crop[..., c].ravel().astype(float), out[..., c].ravel().astype(float), 1) for c in range(3)]
    assert all(abs(slope - 1) <= 0.25 + 0.02 and abs(icept) <= 20 + 3 for slope, icept in fits)
    assert len({round(slope, 2) for slope, _ in fits}) == 3  # each channel its own gain
    assert Augment().cast == 0.0  # off unless a recipe asks for it
