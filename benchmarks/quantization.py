"""Static INT8 quantization (ONNX Runtime, QDQ and QOperator) of both models against fp32.

The question it answers: would an `export --int8` bundle be faster on this CPU? Both models
are quantized with calibration data made of real inputs (face crops from the carphone clip
for the classifier, its frames for the detector), then timed against the fp32 model on the
same batches, interleaved, best of N. It also prints how far the INT8 outputs move.

    python -m benchmarks.quantization [--repeat 7] [--batch 16]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VARIANTS = {
    # name: (format, op types quantized); None quantizes every op type ORT supports
    "qdq_all": ("QDQ", None),
    "qdq_conv_matmul": ("QDQ", ["Conv", "MatMul", "Gemm"]),
    "qoperator_conv_matmul": ("QOperator", ["Conv", "MatMul", "Gemm"]),
}


def _inputs():
    """Real classifier crops and detector batches from the carphone clip."""
    from benchmarks.clips import benchmark_clips
    from benchmarks.detection import bench_bundle
    from worker.media.decode import decode_frames
    from worker.models.bundle import load_bundle
    from worker.models.classifier import FakeClassifier
    from worker.models.crops import crop_faces
    from worker.models.retinaface import FaceDetector
    from worker.settings import Settings

    settings = Settings.from_env({}, model_dir=str(bench_bundle()))
    bundle = load_bundle(settings.model_dir)
    detector, classifier = FaceDetector(settings), FakeClassifier(bundle, settings)
    images = [f.image for clip in benchmark_clips(4) for f in decode_frames(clip, settings)[0]]
    found = detector.detect(images)
    crops = np.concatenate([crop_faces(im, d, bundle.input_size, bundle.crop_margin) for im, d in zip(images, found) if d])
    return bundle, detector, classifier, crops, detector.preprocess(images)


def _quantize(src: Path, dst: Path, feeds: list[dict], fmt: str, ops: list[str] | None) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    pre = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(pre))
    quantize_static(str(pre), str(dst), Reader(), quant_format=getattr(QuantFormat, fmt), op_types_to_quantize=ops,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=False)


def _compare(name: str, src: Path, feeds: list[dict], timing_feed: dict, repeat: int, work: Path) -> dict:
    import onnxruntime as ort

    def session(path):
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    sessions = {"fp32": session(src)}
    for variant, (fmt, ops) in VARIANTS.items():
        dst = work / f"{name}-{variant}.onnx"
        _quantize(src, dst, feeds, fmt, ops)
        sessions[variant] = session(dst)
    best = {k: float("inf") for k in sessions}
    for s in sessions.values():
        s.run(None, timing_feed)  # warm-up
    for _ in range(repeat):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, timing_feed)
            best[k] = min(best[k], time.perf_counter() - t0)
    ref = sessions["fp32"].run(None, timing_feed)[0]
    out = {}
    for k, s in sessions.items():
        diff = float(np.abs(s.run(None, timing_feed)[0] - ref).max())
        out[k] = {"ms": round(best[k] * 1000, 1), "ratio_vs_fp32": round(best[k] / best["fp32"], 2), "max_abs_diff": round(diff, 4)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks.quantization", description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7, help="timed runs per model, best kept (default: %(default)s)")
    ap.add_argument("--batch", type=int, default=16, help="face crops per classifier call (default: %(default)s)")
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)  # the quantizer warns about every LayerNorm weight
    bundle, detector, classifier, crops, det_batches = _inputs()
    cls_in = classifier.input_name
    cls_feeds = [{cls_in: classifier.preprocess(crops[i : i + args.batch])} for i in range(0, len(crops) - args.batch + 1, args.batch)]
    det_feeds = [{detector.input_name: b.array} for b in det_batches]
    from worker.models.retinaface import load_detector_model

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results["classifier"] = _compare("classifier", bundle.model_path, cls_feeds[:8], cls_feeds[0], args.repeat, work)
        det_src = work / "detector.onnx"
        det_src.write_bytes(load_detector_model(detector.settings))
        results["detector"] = _compare("detector", det_src, det_feeds[:4], det_feeds[0], args.repeat, work)
    for model, rows in results.items():
        for variant, row in rows.items():
            print(f"{model:<10} {variant:<22} {row['ms']:>8} ms  {row['ratio_vs_fp32']:>5}x fp32  max |diff| {row['max_abs_diff']}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
