"""The classifier on the untrained ConvNeXt V2 bundle: probabilities, batching, normalisation."""

from __future__ import annotations

import av
import numpy as np
import pytest

from worker.models.classifier import FakeClassifier
from worker.models.crops import crop_faces
from worker.models.retinaface import FaceDetector
from worker.settings import Settings


@pytest.fixture(scope="module")
def crops(untrained_bundle, carphone) -> np.ndarray:
    """Five real face crops: carphone frames -> detector -> the bundle's crop."""
    with av.open(str(carphone)) as container:
        frames = [f.to_ndarray(format="rgb24") for i, f in enumerate(container.decode(video=0)) if i % 24 == 0]
    found = FaceDetector(Settings()).detect(frames)
    crops = np.concatenate(
        [crop_faces(f, d, untrained_bundle.input_size, untrained_bundle.crop_margin) for f, d in zip(frames, found)]
    )
    assert crops.shape == (5, 224, 224, 3)
    return crops


@pytest.fixture(scope="module")
def classifier(untrained_bundle) -> FakeClassifier:
    return FakeClassifier(untrained_bundle, Settings(max_batch_faces=2))


def test_identity_and_providers(classifier, untrained_bundle):
    assert classifier.info == untrained_bundle.info and classifier.info.trained is False
    assert classifier.input_size == 224
    assert classifier.providers[-1] == "CPUExecutionProvider"


def test_probabilities_in_range_and_softmax_of_logits(classifier, crops):
    probs = classifier.predict(crops)
    assert probs.shape == (5,) and probs.dtype == np.float32
    assert np.all((probs >= 0) & (probs <= 1))
    assert np.ptp(probs) > 0  # different faces, different scores: the input reaches the output
    logits = classifier.forward(classifier.preprocess(crops)).astype(np.float64)
    assert logits.shape == (5, 2)
    expected = 1 / (1 + np.exp(logits[:, 0] - logits[:, 1]))  # softmax's fake column for two labels
    np.testing.assert_allclose(probs, expected, atol=1e-6)


def test_batch_size_invariant(classifier, crops):
    batched = classifier.predict(crops)  # three calls of at most 2
    single = np.concatenate([classifier.predict(crops[i : i + 1]) for i in range(len(crops))])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    whole = FakeClassifier(classifier.bundle, Settings(max_batch_faces=32), session=classifier.session)
    np.testing.assert_allclose(whole.predict(crops), single, atol=1e-5)


def test_preprocess_normalises_like_the_bundle_says(classifier, untrained_bundle):
    crop = np.zeros((1, 224, 224, 3), np.uint8)
    crop[..., 0], crop[..., 1], crop[..., 2] = 0, 128, 255
    x = classifier.preprocess(crop)
    assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32
    mean, std = np.array(untrained_bundle.mean), np.array(untrained_bundle.std)
    expected = (np.array([0, 128, 255]) / 255.0 - mean) / std
    np.testing.assert_allclose(x[0, :, 0, 0], expected, rtol=1e-5)


def test_empty_and_wrong_input(classifier):
    assert classifier.predict(np.zeros((0, 224, 224, 3), np.uint8)).shape == (0,)
    with pytest.raises(ValueError, match=r"expected uint8 crops \[N, 224, 224, 3\]"):
        classifier.predict(np.zeros((2, 112, 112, 3), np.uint8))
    with pytest.raises(ValueError, match="expected uint8 crops"):
        classifier.predict(np.zeros((2, 224, 224, 3), np.float32))


def test_normalise_gives_exactly_the_numbers_of_a_plain_transpose_and_cast():
    # training and serving share normalise(): it must not drift from the obvious formula
    from worker.models.classifier import norm_constants, normalise

    scale, shift = norm_constants((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    crops = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    plain = crops.transpose(0, 3, 1, 2).astype(np.float32)
    plain *= scale
    plain += shift
    got = normalise(crops, scale, shift)
    assert got.shape == (5, 3, 32, 32) and got.dtype == np.float32 and got.flags.c_contiguous
    assert np.array_equal(got, plain)
    assert normalise(crops[:0], scale, shift).shape == (0, 3, 32, 32)
