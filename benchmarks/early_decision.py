"""Early decision (DFD_EARLY_DECISION): speed-up and change in verdicts, same clips, same run.

    python -m benchmarks.early_decision [--rounds 2] [--write docs/benchmarks.md]

A trained bundle is needed (random weights score every face near 0.5, where nothing is
decided early): the demo bundle (built first if missing, minutes). Clips: the one-person and
six-person benchmark clips (benchmarks/clips.py) and the demo's held-out real carphone clips.
Each round scans every clip with early decision off, then on, in one process each (same
bundle threshold and aggregation), and compares wall time, classification time, how many
videos were decided early, and every label.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.clips import benchmark_clips
from benchmarks.detection import write_section


def clips() -> list[Path]:
    from worker.paths import cache_dir

    demo_clips = sorted((cache_dir() / "demo-work-v3" / "clips").glob("carphone_*.mp4"))
    return benchmark_clips(12) + benchmark_clips(6, "crowd") + demo_clips


def run_once(bundle: str, early: bool) -> dict:
    from worker.pipeline.scanner import Scanner
    from worker.settings import Settings
    from worker.types import ScanRequest

    paths = clips()
    roots = sorted({str(p.parent) for p in paths})
    with Scanner(Settings.from_env({}, model_dir=bundle, early_decision=early)) as scanner:
        requests = [ScanRequest(f"r{i}", str(p)) for i, p in enumerate(paths)]
        scanner.scan(requests[:2], extra_roots=roots)  # warm-up
        t0 = time.perf_counter()
        verdicts = scanner.scan(requests, extra_roots=roots)
        seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "classify_ms": sum(v.timings_ms.get("classify", 0.0) for v in verdicts),
        "labels": [v.label for v in verdicts],
        "decided_early": sum(v.early_decision is not None for v in verdicts),
        "videos": len(verdicts),
        "aggregation": scanner.aggregation,
        "threshold": scanner.threshold,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks.early_decision", description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2, help="off/on pairs, interleaved (default: %(default)s)")
    ap.add_argument("--bundle", help="model bundle folder (default: the demo bundle, built if missing)")
    ap.add_argument("--write", type=Path, help="Markdown file whose 'Early decision' section gets the figures (default: print only)")
    ap.add_argument("--one", choices=("off", "on"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(run_once(args.bundle, args.one == "on")))
        return 0
    if args.bundle is None:
        from training.demo import ensure_demo_bundle

        args.bundle = str(ensure_demo_bundle(progress=True))
    clips()
    runs = {"off": [], "on": []}
    for _ in range(args.rounds):
        for mode in ("off", "on"):
            out = subprocess.run([sys.executable, "-m", "benchmarks.early_decision", "--one", mode, "--bundle", args.bundle],
                                 capture_output=True, text=True, check=True)
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    off, on = runs["off"], runs["on"]
    changed = sum(a != b for r_off, r_on in zip(off, on) for a, b in zip(r_off["labels"], r_on["labels"]))
    best_off, best_on = min(r["seconds"] for r in off), min(r["seconds"] for r in on)
    cls_off, cls_on = min(r["classify_ms"] for r in off), min(r["classify_ms"] for r in on)
    first = on[0]
    text = "\n".join([
        f"Bundle: {args.bundle} ({first['aggregation']}, threshold {first['threshold']:.3f}); {first['videos']} videos "
        f"(12 one-person and 6 six-person 720p benchmark clips, {first['videos'] - 18} demo carphone clips); "
        f"{args.rounds} interleaved rounds, best of each.",
        "",
        "| Figure | Off | On | Ratio |",
        "|---|---|---|---|",
        f"| scan wall time | {best_off:.1f} s | {best_on:.1f} s | {best_on / best_off:.2f}x |",
        f"| classification time (sum over videos) | {cls_off / 1000:.1f} s | {cls_on / 1000:.1f} s | {cls_on / max(cls_off, 1e-9):.2f}x |",
        f"| videos decided after the first half of their frames | - | {first['decided_early']} of {first['videos']} | |",
        f"| labels that differ from full scoring | - | {changed} of {first['videos'] * args.rounds} | |",
    ])
    print(text)
    if args.write:
        write_section(args.write, "Early decision", f"Measured {time.strftime('%Y-%m-%d')} with `python -m benchmarks.early_decision --write {args.write}`.\n\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
