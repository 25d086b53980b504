"""Training throughput on this machine: `prepare` in videos/s and `train` in images/s.

prepare runs on the shared benchmark clips (720p, 10 s, 30 fps H.264 talking heads, see
benchmarks/clips.py) with the worker's default settings (10 frames per video); train runs
the real `training.train.train` (HF Trainer, augmentations, loss weights, data loading from
PNG crops) on crops plus self-blended fakes and reads the Trainer's own samples/s.

    python -m benchmarks.training [--videos 8] [--steps 20] [--sizes 128,224]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from benchmarks.clips import benchmark_clips


def bench_prepare(clips: list[Path], out: Path, input_size: int) -> dict:
    from training.prepare import VideoItem, prepare

    # half real, half "fake" (labels only matter to training), splits so train and val both exist
    items = [VideoItem(p, ("real", "fake")[i % 2], ("train", "train", "val", "val")[i % 4] if i < 4 else "train", f"g{i}")
             for i, p in enumerate(clips)]
    t0 = time.perf_counter()
    report = prepare(items, out, input_size=input_size, progress=False)
    seconds = time.perf_counter() - t0
    return {"videos": report.done, "crops": report.crops, "seconds": round(seconds, 2),
            "videos_per_s": round(report.done / seconds, 3), "crops_per_s": round(report.crops / seconds, 1)}


def bench_train(data: Path, run: Path, steps: int, batch: int) -> dict:
    from training.train import train

    train(data, run, base="atto", max_steps=steps, batch_size=batch, eval_steps=10 * steps, report_to=[], quiet=True)
    history = [json.loads(line) for line in (run / "log_history.jsonl").read_text().splitlines()]
    summary = next(h for h in history if "train_samples_per_second" in h)
    return {"steps": steps, "batch": batch, "images_per_s": round(float(summary["train_samples_per_second"]), 2),
            "seconds": round(float(summary["train_runtime"]), 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="training steps per input size (after the Trainer's start-up)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--sizes", default="128,224", help="input sizes to time training at")
    args = parser.parse_args(argv)

    import torch

    from training.synth import synthesize

    clips = benchmark_clips(args.videos)
    results = {"machine": f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
                          f"torch {torch.__version__} ({'cuda' if torch.cuda.is_available() else 'cpu'})",
               "load_average_before": os.getloadavg()[0], "prepare": {}, "train": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for size in [int(s) for s in args.sizes.split(",")]:
            data = Path(tmp, f"data{size}")
            results["prepare"][size] = bench_prepare(clips, data, size)
            synthesize(data, progress=False)
            # a short untimed run first: torch's first steps at a new shape are several times slower
            bench_train(data, Path(tmp, f"warm{size}"), 2, args.batch)
            results["train"][size] = bench_train(data, Path(tmp, f"run{size}"), args.steps, args.batch)
    results["load_average_after"] = os.getloadavg()[0]

    print(json.dumps(results, indent=2))
    print("\n| stage | input | figure |\n|---|---|---|")
    for size, r in results["prepare"].items():
        print(f"| prepare ({r['videos']} x 720p 10 s clips, {r['crops']} crops) | {size} px crops | "
              f"**{r['videos_per_s']} videos/s** ({r['crops_per_s']} crops/s) |")
    for size, r in results["train"].items():
        print(f"| train ConvNeXt V2 atto, batch {r['batch']}, {r['steps']} steps | {size} px | **{r['images_per_s']} images/s** |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
