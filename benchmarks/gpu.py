"""GPU benchmark, ready for the first GPU machine: videos/s per GPU and the per-stage split.

    python -m benchmarks.gpu [--videos 200] [--write docs/benchmarks.md]     (make bench-gpu)

Runs the in-process scanner over the benchmark clips (720p, 10 s) with the settings a GPU
wants (detection batches of 32 frames, classification batches of 64 faces, several decode
workers) under each execution provider in turn: TensorRT and CUDA with an fp16 copy of the
bundle's classifier, CUDA with the fp32 one, and the CPU as the reference. Each run reports
the providers ONNX Runtime really used: where a GPU provider is not available (no GPU, or
CPU onnxruntime installed) the run says that it fell back to the CPU, runs a short check
only, and writes no GPU figure. Needs `onnxruntime-gpu` (the `gpu` extra) for GPU figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.clips import FPS, HEIGHT, SECONDS, WIDTH, benchmark_clips
from benchmarks.detection import bench_bundle, write_section
from worker.paths import cache_dir

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
# (label, DFD_PROVIDERS, classifier precision)
CONFIGS = [
    ("tensorrt-fp16", "tensorrt", "fp16"),
    ("cuda-fp16", "cuda", "fp16"),
    ("cuda-fp32", "cuda", "fp32"),
    ("cpu-fp32", "cpu", "fp32"),
]


def fp16_bundle() -> Path:
    """A copy of the benchmark bundle whose classifier runs in float16 (inputs and outputs stay
    float32, so the worker feeds it unchanged). Built once into the cache."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from worker.models.bundle import BundleError, load_bundle, write_bundle

    src = load_bundle(bench_bundle())
    dst = cache_dir() / "bench-bundle-atto-fp16"
    try:
        return load_bundle(dst).path
    except BundleError:
        shutil.rmtree(dst, ignore_errors=True)
    model = convert_float_to_float16(onnx.load(str(src.model_path)), keep_io_types=True)
    staging = cache_dir() / "bench-bundle-atto-fp16.onnx"
    onnx.save(model, str(staging))
    write_bundle(
        dst, staging, name=src.info.name + "-fp16", version=src.info.version, input_size=src.input_size,
        mean=src.mean, std=src.std, labels=src.labels, fake_index=src.fake_index, threshold=src.threshold,
        thresholds=src.thresholds, aggregation=src.aggregation, crop_margin=src.crop_margin,
        align_faces=src.align_faces, trained=src.info.trained, demo=src.info.demo,
        training={"converted_from": src.info.sha256, "precision": "fp16"}, detection=src.detection or None,
    )
    staging.unlink()
    return dst


def run_config(label: str, providers: str, precision: str, videos: int, decode_threads: int, n_clips: int = 12) -> dict:
    """One configuration, in this process (the orchestrator runs each in a child)."""
    from worker.pipeline.scanner import Scanner
    from worker.settings import Settings
    from worker.types import ScanRequest

    model_dir = fp16_bundle() if precision == "fp16" else bench_bundle()
    settings = Settings.from_env(
        {}, model_dir=str(model_dir), providers=(providers,), max_batch_frames=32, max_batch_faces=64,
        decode_threads=decode_threads,
    )
    scanner = Scanner(settings)
    in_use = sorted({p for names in scanner.providers.values() for p in names[:1]})
    fell_back = providers != "cpu" and not any(p in GPU_PROVIDERS for p in in_use)
    if fell_back:
        videos = min(videos, 4)  # prove the path runs; a CPU figure here would mean nothing
    clips = benchmark_clips(n_clips)
    roots = [str(clips[0].parent)]
    requests = [ScanRequest(f"{label}-{i}", str(clips[i % len(clips)])) for i in range(videos)]
    scanner.scan(requests[: min(4, videos)], extra_roots=roots)  # warm-up: arenas, TensorRT engines
    stages: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    verdicts = scanner.scan(requests, extra_roots=roots)
    elapsed = time.perf_counter() - t0
    for v in verdicts:
        for k, ms in v.timings_ms.items():
            stages.setdefault(k, []).append(ms)
    errors = [v.reason for v in verdicts if v.label == "error"]
    return {
        "label": label, "requested": providers, "precision": precision, "providers_in_use": scanner.providers,
        "fell_back_to_cpu": fell_back, "videos": videos, "seconds": round(elapsed, 2),
        "videos_per_s": round(videos / elapsed, 2), "decode_threads": decode_threads,
        "stage_ms_per_video": {k: round(statistics.mean(v), 1) for k, v in stages.items()},
        "errors": errors[:3],
    }


def gpu_names() -> list[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return [line.strip() for line in out.stdout.splitlines() if line.strip()]
    except (OSError, subprocess.TimeoutExpired):
        return []


def report(results: list[dict], gpus: list[str]) -> str:
    lines = [
        f"Clips: {WIDTH}x{HEIGHT}, {SECONDS} s, {FPS} fps H.264 (carphone re-encoded); ConvNeXt V2 atto "
        f"(random weights: speed only); detection batches of 32 frames, classification batches of 64 faces. "
        f"GPU: {', '.join(gpus) or 'none found'}; {os.cpu_count()} CPU cores.",
        "",
        "| Run | Providers in use (detector / classifier) | Videos | Videos/s | decode | detect | classify | Note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        st = r["stage_ms_per_video"]
        used = " / ".join(names[0].replace("ExecutionProvider", "") for names in r["providers_in_use"].values())
        note = "fell back to CPU: no GPU figure" if r["fell_back_to_cpu"] else ""
        if r["errors"]:
            note += f" errors: {r['errors']}"
        lines.append(f"| {r['label']} | {used} | {r['videos']} | {r['videos_per_s']} | {st.get('decode', 0):.0f} ms "
                     f"| {st.get('detect', 0):.0f} ms | {st.get('classify', 0):.0f} ms | {note} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks.gpu", description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=200, help="videos per GPU run (default: %(default)s)")
    ap.add_argument("--decode-threads", type=int, default=min(8, os.cpu_count() or 1),
                    help="videos fetched and decoded at once (default: min(8, cores) = %(default)s)")
    ap.add_argument("--config", help="run one configuration in this process and print its JSON (used internally)")
    ap.add_argument("--write", type=Path, help="Markdown file whose 'GPU' section gets the figures (default: print only)")
    args = ap.parse_args(argv)
    if args.config:
        label, providers, precision = next(c for c in CONFIGS if c[0] == args.config)
        print(json.dumps(run_config(label, providers, precision, args.videos, args.decode_threads)))
        return 0
    import onnxruntime as ort

    available = ort.get_available_providers()
    gpus = gpu_names()
    print(f"onnxruntime {ort.__version__}, available providers {available}; GPUs: {gpus or 'none'}", flush=True)
    bench_bundle()
    fp16_bundle()
    benchmark_clips(12)
    results = []
    for label, _, _ in CONFIGS:
        # each run in its own process: sessions, arenas and TensorRT engines do not mix
        out = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--config", label, "--videos", str(args.videos),
                              "--decode-threads", str(args.decode_threads)], capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{label}: failed\n{out.stderr[-2000:]}", flush=True)
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        status = "FELL BACK TO CPU (no usable GPU provider)" if r["fell_back_to_cpu"] else f"{r['videos_per_s']} videos/s"
        print(f"{label}: {status}; providers in use {r['providers_in_use']}; stages {r['stage_ms_per_video']}", flush=True)
    text = report(results, gpus)
    print(text)
    measured_gpu = any(not r["fell_back_to_cpu"] and r["requested"] != "cpu" for r in results)
    if not measured_gpu:
        print("no GPU provider was usable: every GPU run fell back to the CPU; nothing written")
    elif args.write:
        stamp = time.strftime("%Y-%m-%d")
        write_section(args.write, "GPU", f"Measured {stamp} with `python -m benchmarks.gpu --write {args.write}`.\n\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
