"""Face tracks (DFD_CROPS_PER_FACE): speed-up and change in verdicts, same clips, same run.

    python -m benchmarks.tracks [--k 0 4] [--rounds 1] [--bundle DIR] [--write docs/benchmarks.md]

A trained bundle is needed for verdicts to mean anything: the demo bundle (built first if
missing, minutes). Clips: the one-person and six-person 720p benchmark clips
(benchmarks/clips.py), the demo's held-out carphone clips (real), and the `make demo`
samples with their known answers (two real, two pseudo-fakes, one without a face).
Each K scans every clip in a fresh process; labels and scores are compared with:
- K=0 under tracks (every face classified, video = highest track score), and
- the aggregation before tracks (every face classified; per frame the highest face
  score, then the bundle's aggregation over frames), recomputed from the K=0 verdicts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.clips import benchmark_clips
from benchmarks.detection import write_section


def clips() -> list[tuple[Path, str, str]]:
    """(path, kind, truth: real/fake/no_face or '' when unknown)."""
    from training.demo import demo_samples
    from worker.paths import cache_dir

    out = [(p, "one-person benchmark", "") for p in benchmark_clips(12)]
    out += [(p, "six-person benchmark", "") for p in benchmark_clips(12, "crowd")]
    out += [(p, "demo carphone (real)", "real") for p in sorted((cache_dir() / "demo-work-v3" / "clips").glob("carphone_*.mp4"))]
    out += [(s.path, "demo sample", s.truth) for s in demo_samples(cache_dir() / "bench-demo-samples")]
    return out


def run_once(bundle: str, k: int) -> dict:
    from worker.pipeline.aggregate import aggregate, frame_scores
    from worker.pipeline.scanner import Scanner
    from worker.settings import Settings
    from worker.types import ScanRequest

    paths = [p for p, _, _ in clips()]
    roots = sorted({str(p.parent) for p in paths})
    with Scanner(Settings.from_env({}, model_dir=bundle, crops_per_face=k)) as scanner:
        requests = [ScanRequest(f"r{i}", str(p)) for i, p in enumerate(paths)]
        scanner.scan(requests[:2], extra_roots=roots)  # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        verdicts = scanner.scan(requests, extra_roots=roots)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0

    def per_frame(v) -> float | None:
        if not v.faces:
            return None
        _, scores = frame_scores([f.frame_index for f in v.faces], [f.fake_score for f in v.faces])
        return aggregate(scores, v.aggregation)

    return {
        "seconds": seconds,
        "cpu_s": cpu,
        "classify_ms": [v.timings_ms.get("classify", 0.0) for v in verdicts],
        "faces": [len(v.faces) for v in verdicts],
        "tracks": [len(v.tracks or []) for v in verdicts],
        "labels": [v.label for v in verdicts],
        "scores": [v.score for v in verdicts],
        "per_frame_scores": [per_frame(v) for v in verdicts],
        "aggregation": scanner.aggregation,
        "threshold": scanner.threshold,
    }


def eval_set(bundle: str, ks: list[int]) -> str:
    """The demo bundle's own evaluation set (`dfd-train prepare` crops, val and test splits):
    per-clip AUC and labels at the bundle's threshold with every frame against K frames spread
    over each clip (its clips hold one face per frame, so one track each)."""
    import csv
    from collections import defaultdict

    import numpy as np
    from sklearn.metrics import roc_auc_score

    from training.dataset import load_rgb
    from worker.models.bundle import load_bundle
    from worker.models.classifier import FakeClassifier
    from worker.paths import cache_dir
    from worker.pipeline.aggregate import aggregate
    from worker.pipeline.tracks import spread
    from worker.settings import Settings

    data = cache_dir() / "demo-work-v3" / "data"
    rows = [r for r in csv.DictReader(open(data / "metadata.csv")) if r["split"] in ("val", "test")]
    b = load_bundle(bundle)
    scores = FakeClassifier(b, Settings()).predict(np.stack([load_rgb(data / r["crop"]) for r in rows]))
    clips: dict[tuple[str, str], dict] = defaultdict(lambda: {"frames": {}, "label": None})
    for r, s in zip(rows, scores):
        clip = clips[(r["split"], r["video"])]
        clip["label"] = r["label"]
        frame = int(r["frame_index"])
        clip["frames"][frame] = max(clip["frames"].get(frame, 0.0), float(s))
    lines = [
        f"Evaluation set of {b.info.name} ({b.aggregation}, threshold {b.threshold:.3f}): the val and test clips of "
        f"`dfd-train prepare` ({len(clips)} clips, {sum(len(c['frames']) > 1 for c in clips.values())} with several frames; "
        "one face per frame, so one track per clip).",
        "",
        "| Split | K | per-clip AUC | per-clip AUC, clips of several frames | labels that differ from every frame |",
        "|---|---|---|---|---|",
    ]
    for split in ("val", "test"):
        mine = [c for (sp, _), c in clips.items() if sp == split]
        truth = [c["label"] == "fake" for c in mine]
        full = None
        for k in ks:
            video = [aggregate(np.array([c["frames"][f] for f in sorted(c["frames"])])[spread(len(c["frames"]), k)], b.aggregation)
                     for c in mine]
            labels = [v >= b.threshold for v in video]
            if full is None:
                full = labels
            auc = roc_auc_score(truth, video) if len(set(truth)) == 2 else float("nan")
            multi = [i for i, c in enumerate(mine) if len(c["frames"]) > 1]
            t_multi = [truth[i] for i in multi]
            auc_multi = roc_auc_score(t_multi, [video[i] for i in multi]) if len(set(t_multi)) == 2 else float("nan")
            lines.append(f"| {split} | {k} | {auc:.3f} | {auc_multi:.3f} ({len(multi)} clips) | "
                         f"{sum(a != f for a, f in zip(labels, full))} of {len(mine)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks.tracks", description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, nargs="+", default=[0, 4], help="DFD_CROPS_PER_FACE values; 0 first (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=1, help="passes over every K, interleaved; best time kept (default: %(default)s)")
    ap.add_argument("--bundle", help="model bundle folder (default: the demo bundle, built if missing)")
    ap.add_argument("--write", type=Path, help="Markdown file whose 'Face tracks' section gets the figures")
    ap.add_argument("--save", type=Path, help="also write the raw runs to this JSON file")
    ap.add_argument("--load", type=Path, help="report the runs saved by --save instead of scanning")
    ap.add_argument("--eval-set", action="store_true", help="only the bundle's own evaluation set (per-clip AUC, labels) for each K")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one is not None:
        print(json.dumps(run_once(args.bundle, args.one)))
        return 0
    if args.bundle is None and args.load:
        args.bundle = json.loads(args.load.read_text())["bundle"]
    if args.bundle is None:
        from training.demo import ensure_demo_bundle

        args.bundle = str(ensure_demo_bundle(progress=True))
    info = clips()
    ks = [0] + [k for k in args.k if k != 0]
    if args.load:
        saved = json.loads(args.load.read_text())
        return report(args, info, ks, {int(k): v for k, v in saved["runs"].items()})
    if args.eval_set:
        print(eval_set(args.bundle, ks))
        return 0
    runs: dict[int, list[dict]] = {k: [] for k in ks}
    for _ in range(args.rounds):
        for k in ks:
            out = subprocess.run([sys.executable, "-m", "benchmarks.tracks", "--one", str(k), "--bundle", args.bundle],
                                 capture_output=True, text=True, check=True)
            runs[k].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"K={k}: {runs[k][-1]['seconds']:.1f} s", flush=True)
    if args.save:
        args.save.write_text(json.dumps({"bundle": args.bundle, "runs": runs}))
    return report(args, info, ks, runs)


def report(args, info, ks: list[int], runs: dict[int, list[dict]]) -> int:
    full = runs[0][0]
    thr = full["threshold"]
    old_labels = ["no_face" if s is None else ("fake" if s >= thr else "real") for s in full["per_frame_scores"]]
    kinds = list(dict.fromkeys(kind for _, kind, _ in info))
    lines = [
        f"Bundle: {args.bundle} ({full['aggregation']}, threshold {thr:.3f}); {len(info)} videos: "
        + ", ".join(f"{sum(kd == name for _, name, _ in info)} {kd}" for kd in kinds)
        + f"; {args.rounds} round(s), fastest of each K; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end.",
        "",
        "| K (DFD_CROPS_PER_FACE) | scan wall time | CPU time (scanning process) | classified faces (per video, by kind) | labels that differ from K=0 | from the per-frame aggregation before tracks | max abs score change vs K=0 | right on the labelled clips |",
        "|---|---|---|---|---|---|---|---|",
    ]
    labelled = [i for i, (_, _, truth) in enumerate(info) if truth]
    old_right = sum(old_labels[i] == info[i][2] for i in labelled)
    for k in ks:
        r = min(runs[k], key=lambda x: x["seconds"])
        faces = ", ".join(
            f"{statistics.mean(n for n, (_, kd, _) in zip(r['faces'], info) if kd == kind):.1f}" for kind in kinds
        )
        diff = sum(a != b for a, b in zip(r["labels"], full["labels"]))
        diff_old = sum(a != b for a, b in zip(r["labels"], old_labels))
        deltas = [abs(a - b) for a, b in zip(r["scores"], full["scores"]) if a is not None and b is not None]
        right = sum(r["labels"][i] == info[i][2] for i in labelled)
        lines.append(
            f"| {k} | {r['seconds']:.1f} s | {r['cpu_s']:.1f} s | {faces} | {diff} of {len(info)} | {diff_old} of {len(info)} | "
            f"{max(deltas, default=0):.3f} | {right} of {len(labelled)} |"
        )
    lines += [
        "",
        f"Before tracks (every face, per-frame aggregation): right on {old_right} of {len(labelled)} labelled clips. "
        "Classified faces per video are given for: " + ", ".join(kinds) + ".",
        "Per video, for the demo clips and any clip whose label changed (K=0 score / "
        + " / ".join(f"K={k}" for k in ks[1:]) + " score, per-frame score before tracks):",
    ]
    best = {k: min(runs[k], key=lambda x: x["seconds"]) for k in ks}
    for i, (path, kind, truth) in enumerate(info):
        labels = {best[k]["labels"][i] for k in ks} | {old_labels[i]}
        if "benchmark" in kind and len(labels) == 1:
            continue
        cells = [full["scores"][i]] + [min(runs[k], key=lambda x: x["seconds"])["scores"][i] for k in ks[1:]]
        fmt = " / ".join("-" if s is None else f"{s:.3f}" for s in cells)
        old = full["per_frame_scores"][i]
        lines.append(f"- {path.name} ({kind}{', ' + truth if truth else ''}): {fmt}, before {'-' if old is None else f'{old:.3f}'}")
    text = "\n".join(lines)
    if args.write:  # the section carries the evaluation-set table too
        text += "\n\n" + eval_set(args.bundle, ks)
    print(text)
    if args.write:
        write_section(args.write, "Face tracks", f"Measured {time.strftime('%Y-%m-%d')} with `python -m benchmarks.tracks "
                      f"--k {' '.join(map(str, args.k))} --write {args.write}`.\n\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
