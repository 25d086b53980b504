"""The deepfake classifier: a model bundle's ONNX network over face crops -> probability of fake."""

from __future__ import annotations

import cv2
import numpy as np

from worker.models.bundle import ModelBundle
from worker.models.runtime import active_providers, create_session
from worker.settings import Settings
from worker.types import ModelInfo


def norm_constants(mean, std) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift), each [1, 3, 1, 1] float32, with (x / 255 - mean) / std == x * scale + shift."""
    std = np.asarray(std, np.float32)
    scale = (1.0 / (255.0 * std)).reshape(1, 3, 1, 1).astype(np.float32)
    shift = (-np.asarray(mean, np.float32) / std).reshape(1, 3, 1, 1).astype(np.float32)
    return scale, shift


def normalise(crops: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """NHWC uint8 RGB crops -> NCHW float32 model input. Training (training/dataset.py) calls
    this too, so a model is trained on exactly the numbers the worker feeds it."""
    # Plane by plane into NCHW (cv2.split copies each channel out contiguously): half the
    # time of one strided transpose-and-cast; the float32 arithmetic, and so every value, is
    # the same.
    x = np.empty((crops.shape[0], crops.shape[3], crops.shape[1], crops.shape[2]), np.float32)
    for i, crop in enumerate(crops):
        for channel, plane in enumerate(cv2.split(np.ascontiguousarray(crop))):
            x[i, channel] = plane
    x *= scale
    x += shift
    return x


class FakeClassifier:
    """Scores face crops; `predict` = preprocess -> forward -> softmax, in batches."""

    def __init__(self, bundle: ModelBundle, settings: Settings, session=None):
        self.bundle = bundle
        self.settings = settings
        self.session = session if session is not None else create_session(bundle.model_path, settings)
        self.providers = active_providers(self.session)
        self.info: ModelInfo = bundle.info
        self.input_size = bundle.input_size
        self.input_name = self.session.get_inputs()[0].name
        # (x / 255 - mean) / std folded into one multiply-add per pixel.
        self._scale, self._shift = norm_constants(bundle.mean, bundle.std)

    def preprocess(self, crops: np.ndarray) -> np.ndarray:
        """NHWC uint8 RGB crops -> NCHW float32, normalised as the model was trained."""
        size = self.input_size
        if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[1:] != (size, size, 3):
            raise ValueError(f"expected uint8 crops [N, {size}, {size}, 3], got {crops.dtype} {crops.shape}")
        return normalise(crops, self._scale, self._shift)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Logits [N, num_labels] for a preprocessed batch."""
        return self.session.run(None, {self.input_name: x})[0]

    def predict(self, crops: np.ndarray) -> np.ndarray:
        """Probability of fake for each crop, [N] float32; batches of settings.max_batch_faces."""
        if len(crops) == 0:
            return np.zeros(0, np.float32)
        per_call = max(1, self.settings.max_batch_faces)
        parts = [self.forward(self.preprocess(crops[i : i + per_call])) for i in range(0, len(crops), per_call)]
        logits = np.concatenate(parts).astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)  # stable softmax
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        return probs[:, self.bundle.fake_index].astype(np.float32)
