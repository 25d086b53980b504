"""Detection benchmark: the in-process pipeline against the seed's way of doing it, same run.

    python -m benchmarks.detection [--videos 50] [--baseline-videos 8] [--crowd-videos 20] [--every-crop] [--write docs/benchmarks.md]
    python -m benchmarks.detection --isolation-rounds 4 [--videos 30] [--write docs/benchmarks.md]
    python -m benchmarks.detection --glue-rounds 3 [--write docs/benchmarks.md]

Clips of one talking head, and clips of six (benchmarks/clips.py): classification grows with
faces, so both kinds are measured against the baseline.

Phases run in child processes so each one's peak RSS is its own:
- ours: `Scanner.scan` over the benchmark clips (PyAV sampled decode in a thread pool,
  RetinaFace batched over downscaled frames, ConvNeXt V2 batched over faces);
- baseline: what the seed's scripts did: OpenCV reads every frame and keeps 10, one
  RetinaFace call per frame at full resolution, one classifier call per face;
- decode: our `decode_frames` against the `ffmpeg` command line producing the same frames;
- models: each model stage against bare `session.run` on the very same batches
  (--glue-rounds N: only this phase, N times in fresh processes).
With --isolation-rounds: only `ours`, with fetch + decode in child processes (the default)
and in threads (DFD_MEDIA_ISOLATION=thread), alternating, to measure what containment costs.
Figures are printed and, with --write, put into the "Detection" section of the given file.
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

import numpy as np

from benchmarks.clips import FPS, HEIGHT, SECONDS, WIDTH, benchmark_clips
from worker.paths import cache_dir

CACHE = cache_dir()


def bench_bundle() -> Path:
    """The ConvNeXt V2 atto bundle the figures are measured with (random weights: speed only)."""
    from worker.models.bundle import load_bundle

    path = CACHE / "bench-bundle-atto"
    try:
        load_bundle(path)
    except Exception:
        from training.untrained_bundle import build_untrained_bundle

        build_untrained_bundle(path, size="atto")
    return path


def _settings(**kw):
    from worker.settings import Settings

    return Settings.from_env(model_dir=str(bench_bundle()), **kw)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- phases (run in child processes) -------------------------------------------------
def phase_ours(n: int, kind: str = "single") -> dict:
    from worker.pipeline.scanner import Scanner
    from worker.types import ScanRequest

    clips = benchmark_clips(min(n, 12), kind)
    settings = _settings()
    scanner = Scanner(settings)
    requests = [ScanRequest(f"r{i}", str(clips[i % len(clips)])) for i in range(n)]
    roots = [str(clips[0].parent)]
    scanner.scan(requests[:2], extra_roots=roots)  # warm-up: first ORT runs allocate arenas
    rss_after: list[float] = []
    stage: dict[str, list[float]] = {}
    labels: dict[str, int] = {}
    faces_seen: list[int] = []  # classified faces per verdict
    t0 = time.perf_counter()
    chunk = 5  # scan in chunks to sample memory as the run goes
    for start in range(0, n, chunk):
        for v in scanner.scan(requests[start : start + chunk], extra_roots=roots):
            labels[v.label] = labels.get(v.label, 0) + 1
            faces_seen.append(len(v.faces))
            for k, ms in v.timings_ms.items():
                stage.setdefault(k, []).append(ms)
        rss_after.append(_rss_mb())
    elapsed = time.perf_counter() - t0
    frames = n * settings.frames_per_video
    # Media children are the forkserver's, not ours: their CPU and peak RSS are read here.
    children = scanner._media.pids() if scanner._media is not None else []
    return {
        "kind": kind,
        "isolation": settings.media_isolation,
        "media_children_cpu_s": sum(_cpu_s(pid) for pid in children),
        "media_children_peak_rss_mb": [_hwm_mb(pid) for pid in children],
        "videos": n,
        "seconds": elapsed,
        "videos_per_s": n / elapsed,
        "frames_per_s": frames / elapsed,
        "stage_ms_per_video": {k: statistics.mean(v) for k, v in stage.items()},
        "labels": labels,
        # RSS sampled every 5 videos; it moves with what is in flight, so growth is judged
        # by the highest sample of each half of the run, not by two single samples.
        "rss_mb_samples": [round(r) for r in rss_after],
        "rss_mb_max_first_half": max(rss_after[: max(1, len(rss_after) // 2)]),
        "rss_mb_max_second_half": max(rss_after[len(rss_after) // 2 :]),
        "providers": scanner.providers,
        "crops_per_face": settings.crops_per_face,
        "max_batch_faces": settings.max_batch_faces,
        "faces_per_video": sum(faces_seen) / n,
    }


def phase_baseline(n: int, kind: str = "single") -> dict:
    import cv2
    import onnxruntime as ort

    from worker.models.bundle import load_bundle
    from worker.models.classifier import FakeClassifier
    from worker.models.crops import crop_faces
    from worker.models.retinaface import FaceDetector, load_detector_model

    clips = benchmark_clips(min(n, 12), kind)
    settings = _settings(detect_long_side=0, max_batch_frames=1, max_batch_faces=1)
    bundle = load_bundle(settings.model_dir)
    # Plain ORT sessions with default options, as a script would open them.
    detector = FaceDetector(settings, session=ort.InferenceSession(load_detector_model(settings)))
    classifier = FakeClassifier(bundle, settings, session=ort.InferenceSession(str(bundle.model_path)))
    faces = 0
    t0 = time.perf_counter()
    for i in range(n):
        cap = cv2.VideoCapture(str(clips[i % len(clips)]))
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        wanted = set(np.linspace(0, total - 1, settings.frames_per_video).round().astype(int).tolist())
        kept, index = [], 0
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            if index in wanted:
                kept.append(np.ascontiguousarray(bgr[:, :, ::-1]))
            index += 1
        cap.release()
        for image in kept:
            (dets,) = detector.detect([image])
            for d in dets:
                classifier.predict(crop_faces(image, [d], bundle.input_size, bundle.crop_margin))
                faces += 1
    elapsed = time.perf_counter() - t0
    return {"videos": n, "seconds": elapsed, "videos_per_s": n / elapsed, "faces": faces}


def phase_decode(n: int, kind: str = "single") -> dict:
    """Our sampled decode vs the ffmpeg CLI producing the same frames, per video."""
    import imageio_ffmpeg

    from worker.media.decode import decode_frames

    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    clips = benchmark_clips(min(n, 12))[:n]
    settings = _settings()
    ours, select_all, seek_each, strategies = [], [], [], set()
    for clip in clips:
        t0 = time.perf_counter()
        frames, info = decode_frames(clip, settings)
        ours.append(time.perf_counter() - t0)
        strategies.add(info.strategy)
        times = [f.time_s for f in frames]
        idx = [round(t * FPS) for t in times]
        # (a) one process decodes the stream and converts only the selected frames
        select = "+".join(f"eq(n\\,{i})" for i in idx)
        cmd = [ffmpeg, "-v", "error", "-i", str(clip), "-vf", f"select='{select}'", "-fps_mode", "passthrough",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, check=True).stdout
        select_all.append(time.perf_counter() - t0)
        assert len(out) == len(idx) * WIDTH * HEIGHT * 3, "ffmpeg returned a different number of frames"
        # (b) one input-seeking process per frame, as `ffmpeg -ss T -i clip -frames:v 1` scripts do
        t0 = time.perf_counter()
        for t in times:
            subprocess.run([ffmpeg, "-v", "error", "-ss", f"{t:.3f}", "-i", str(clip), "-frames:v", "1",
                            "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True)
        seek_each.append(time.perf_counter() - t0)
    best_ffmpeg = min(statistics.mean(select_all), statistics.mean(seek_each))
    return {
        "videos": len(clips),
        "ours_ms": 1000 * statistics.mean(ours),
        "ffmpeg_select_ms": 1000 * statistics.mean(select_all),
        "ffmpeg_seek_each_ms": 1000 * statistics.mean(seek_each),
        "ratio_vs_best_ffmpeg": statistics.mean(ours) / best_ffmpeg,
        "strategies": sorted(strategies),
    }


def phase_models(n: int, kind: str = "single") -> dict:
    """Each model stage vs bare session.run on the same batches, over the frames of `n` videos."""
    from worker.media.decode import decode_frames
    from worker.models.bundle import load_bundle
    from worker.models.classifier import FakeClassifier
    from worker.models.crops import crop_faces
    from worker.models.retinaface import FaceDetector

    settings = _settings()
    bundle = load_bundle(settings.model_dir)
    detector = FaceDetector(settings)
    classifier = FakeClassifier(bundle, settings)
    images = [f.image for clip in benchmark_clips(min(n, 12))[:n] for f in decode_frames(clip, settings)[0]]

    batches = detector.preprocess(images)
    detections = detector.detect(images)  # warm-up
    crops = np.concatenate([crop_faces(img, d, bundle.input_size, bundle.crop_margin) for img, d in zip(images, detections) if d])
    step = settings.max_batch_faces
    inputs = [classifier.preprocess(crops[i : i + step]) for i in range(0, len(crops), step)]
    classifier.predict(crops)

    cpu: dict[str, float] = {}

    def best_of(a, b, reps=9, name="") -> tuple[float, float]:
        """Fastest of `reps` runs of each, interleaved so both see the same background load;
        the CPU time (all threads) of those fastest runs goes into cpu[name + "_full" / "_bare"]."""
        ta, tb = [], []
        for _ in range(reps):
            for fn, times in ((a, ta), (b, tb)):
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                times.append((time.perf_counter() - t0, time.process_time() - c0))
        cpu[name + "_full"], cpu[name + "_bare"] = min(ta)[1], min(tb)[1]
        return min(ta)[0], min(tb)[0]

    det_full, det_bare = best_of(
        lambda: detector.detect(images),
        lambda: [detector.session.run(None, {detector.input_name: b.array}) for b in batches],
        name="detect",
    )
    cls_full, cls_bare = best_of(lambda: classifier.predict(crops), lambda: [classifier.forward(x) for x in inputs], name="classify")
    return {
        "detect_cpu_ms": 1000 * cpu["detect_full"],
        "detect_bare_cpu_ms": 1000 * cpu["detect_bare"],
        "frames": len(images),
        "faces": int(len(crops)),
        "detect_ms": 1000 * det_full,
        "detect_bare_ms": 1000 * det_bare,
        "detect_ratio": det_full / det_bare,
        "classify_ms": 1000 * cls_full,
        "classify_bare_ms": 1000 * cls_bare,
        "classify_ratio": cls_full / cls_bare,
    }


PHASES = {"ours": phase_ours, "baseline": phase_baseline, "decode": phase_decode, "models": phase_models}


# -- orchestration -----------------------------------------------------------------------
def run_phase(name: str, n: int, kind: str = "single", env: dict[str, str] | None = None) -> dict:
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.detection", "--phase", name, "--n", str(n), "--kind", kind],
                            stdout=subprocess.PIPE, env={**os.environ, **(env or {})})
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"phase {name} failed (status {status})")
    result = json.loads(out.decode().strip().splitlines()[-1])
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    result["cpu_s"] = usage.ru_utime + usage.ru_stime  # includes set-up (model load, warm-up)
    return result


def _crowd_rows(r: dict) -> list[str]:
    if "crowd_ours" not in r:
        return []
    ours, base = r["crowd_ours"], r["crowd_baseline"]
    speedup = ours["videos_per_s"] / base["videos_per_s"]
    rows = [
        f"| six-person clips: videos/s >= 3x the seed-style baseline | {ours['videos_per_s']:.2f} vs {base['videos_per_s']:.2f} videos/s = **{speedup:.2f}x** | {'yes' if speedup >= 3 else 'NO'} |"
    ]
    if "crowd_compare" in r:
        other = r["crowd_compare"]
        rows.append(
            f"| (for comparison, not a floor) six-person clips with DFD_CROPS_PER_FACE={other.get('crops_per_face', '?')} | "
            f"{other['videos_per_s']:.2f} videos/s = {other['videos_per_s'] / base['videos_per_s']:.2f}x the baseline; "
            f"CPU per video {_cpu_per_video(other):.2f} s vs {_cpu_per_video(ours):.2f} s with the default | - |"
        )
    return rows


def _cpu_per_video(ours: dict) -> float:
    return (ours["cpu_s"] + ours.get("media_children_cpu_s", 0.0)) / ours["videos"]


def report(r: dict) -> str:
    ours, base, dec, mod = r["ours"], r["baseline"], r["decode"], r["models"]
    speedup = ours["videos_per_s"] / base["videos_per_s"]
    stages = ", ".join(f"{k} {v:.0f}" for k, v in ours["stage_ms_per_video"].items())
    lines = [
        f"Clips: {WIDTH}x{HEIGHT}, {SECONDS} s, {FPS} fps H.264 (carphone re-encoded), "
        f"DFD_CROPS_PER_FACE {ours.get('crops_per_face', '?')}, DFD_MAX_BATCH_FACES {ours.get('max_batch_faces', '?')}, "
        f"{ours['videos']} videos for our pipeline, {base['videos']} for the baseline; "
        f"ConvNeXt V2 atto (random weights: speed only), CPU, {os.cpu_count()} cores, providers {ours['providers']}.",
        "",
        "| Floor | Measured | Met |",
        "|---|---|---|",
        f"| one-person clips: videos/s >= 3x the seed-style baseline | {ours['videos_per_s']:.2f} vs {base['videos_per_s']:.2f} videos/s = **{speedup:.2f}x** | {'yes' if speedup >= 3 else 'NO'} |",
        f"| decode <= 1.2x the ffmpeg CLI for the same frames | {dec['ours_ms']:.0f} ms vs {min(dec['ffmpeg_select_ms'], dec['ffmpeg_seek_each_ms']):.0f} ms per video = **{dec['ratio_vs_best_ffmpeg']:.2f}x** | {'yes' if dec['ratio_vs_best_ffmpeg'] <= 1.2 else 'NO'} |",
        f"| face detection <= 1.15x bare ORT on the same batches | {mod['detect_ms']:.0f} vs {mod['detect_bare_ms']:.0f} ms ({mod['frames']} frames) = **{mod['detect_ratio']:.2f}x** | {'yes' if mod['detect_ratio'] <= 1.15 else 'NO'} |",
        f"| classification <= 1.15x bare ORT on the same batches | {mod['classify_ms']:.0f} vs {mod['classify_bare_ms']:.0f} ms ({mod['faces']} faces) = **{mod['classify_ratio']:.2f}x** | {'yes' if mod['classify_ratio'] <= 1.15 else 'NO'} |",
        *_crowd_rows(r),
        f"| peak RSS < 1 GB (atto) | {ours['peak_rss_mb']:.0f} MB | {'yes' if ours['peak_rss_mb'] < 1024 else 'NO'} |",
        f"| no RSS growth over {ours['videos']} videos | highest RSS {ours['rss_mb_max_first_half']:.0f} MB in the first half, {ours['rss_mb_max_second_half']:.0f} MB in the second | {'yes' if ours['rss_mb_max_second_half'] <= ours['rss_mb_max_first_half'] * 1.05 else 'NO'} |",
        "",
        f"Our pipeline: {ours['videos_per_s']:.2f} videos/s, {ours['frames_per_s']:.1f} sampled frames/s; "
        f"per-stage ms per video: {stages}. Labels: {ours['labels']}.",
        f"Decode: ours {dec['ours_ms']:.0f} ms/video (strategy {', '.join(dec['strategies'])}); ffmpeg CLI with a select "
        f"filter {dec['ffmpeg_select_ms']:.0f} ms, ffmpeg seeking once per frame {dec['ffmpeg_seek_each_ms']:.0f} ms.",
        f"RSS every 5 videos (MB): {ours['rss_mb_samples']}.",
        f"Baseline peak RSS {base['peak_rss_mb']:.0f} MB, {base['faces']} faces classified one by one.",
        *([f"Six-person clips (3x2 grid of carphone heads, DFD_MAX_FACES_PER_FRAME 4): ours {r['crowd_ours']['videos']} videos, "
           f"per-stage ms per video: {', '.join(f'{k} {v:.0f}' for k, v in r['crowd_ours']['stage_ms_per_video'].items())}, "
           f"{r['crowd_ours']['faces_per_video']:.1f} faces classified per video; "
           f"baseline {r['crowd_baseline']['videos']} videos, {r['crowd_baseline']['faces']} faces classified one by one."]
          if "crowd_ours" in r else []),
        f"CPU time per video (whole child process, set-up included; ours with its media children's decode): "
        f"ours {_cpu_per_video(ours):.2f} s, baseline {base['cpu_s'] / base['videos']:.2f} s"
        + (f"; six-person clips: ours {_cpu_per_video(r['crowd_ours']):.2f} s, baseline "
           f"{r['crowd_baseline']['cpu_s'] / r['crowd_baseline']['videos']:.2f} s" if "crowd_ours" in r else "")
        + f" (load average {os.getloadavg()[0]:.1f} at the end: figures taken on a busy machine are noisier in wall time "
        "than in CPU time).",
    ]
    return "\n".join(lines)


def isolation_report(rounds: list[dict[str, dict]]) -> str:
    """Media in child processes (the default) against the same pipeline decoding in threads."""
    ratios = [r["process"]["videos_per_s"] / r["thread"]["videos_per_s"] for r in rounds]
    cpu = [
        (r["process"]["cpu_s"] + r["process"]["media_children_cpu_s"]) / r["thread"]["cpu_s"] for r in rounds
    ]
    median = statistics.median(ratios)
    lines = [
        f"{len(rounds)} rounds of {rounds[0]['process']['videos']} videos each way, the two modes alternating "
        f"(first mode swapped every round); {os.cpu_count()} cores shared with other work "
        f"(load average {os.getloadavg()[0]:.1f} at the end).",
        "",
        "| Round | process videos/s | thread videos/s | process / thread | CPU process / thread |",
        "|---|---|---|---|---|",
    ]
    for i, (r, ratio, c) in enumerate(zip(rounds, ratios, cpu), 1):
        lines.append(
            f"| {i} | {r['process']['videos_per_s']:.2f} | {r['thread']['videos_per_s']:.2f} | {ratio:.3f} | {c:.3f} |"
        )
    lines += [
        "",
        f"Floor: no more than 5% fewer videos/s than in-thread decoding. Median ratio **{median:.3f}** "
        f"(spread {min(ratios):.3f}-{max(ratios):.3f}): {'met' if median >= 0.95 else 'NOT met'}.",
        "Peak RSS of the media children (each, MB): "
        + ", ".join(str([round(m) for m in r["process"]["media_children_peak_rss_mb"]]) for r in rounds)
        + "; scanning process, process mode: "
        + ", ".join(f"{r['process']['peak_rss_mb']:.0f}" for r in rounds)
        + " MB; thread mode: "
        + ", ".join(f"{r['thread']['peak_rss_mb']:.0f}" for r in rounds)
        + " MB (process mode maps the frames from shared memory, so they count in both).",
    ]
    return "\n".join(lines)


def glue_report(runs: list[dict]) -> str:
    """Model stages against bare session.run on the same batches, one row per fresh process."""
    lines = [
        f"{len(runs)} runs in fresh processes, each best of 9 interleaved with bare `session.run` on the very same "
        f"batches ({runs[0]['frames']} frames of 6 one-person clips, {runs[0]['faces']} faces); {os.cpu_count()} cores "
        f"(load average {os.getloadavg()[0]:.1f} at the end). CPU time is all threads' (process time) of those runs.",
        "",
        "| Run | detection ms (ours / bare) | detection ratio | detection CPU ms (ours / bare) | classification ratio |",
        "|---|---|---|---|---|",
    ]
    for i, r in enumerate(runs, 1):
        lines.append(
            f"| {i} | {r['detect_ms']:.0f} / {r['detect_bare_ms']:.0f} | **{r['detect_ratio']:.3f}x** | "
            f"{r['detect_cpu_ms']:.0f} / {r['detect_bare_cpu_ms']:.0f} | {r['classify_ratio']:.3f}x |"
        )
    worst = max(r["detect_ratio"] for r in runs)
    lines += ["", f"Floor: face detection within 1.15x of bare ORT in every run. Worst run {worst:.3f}x: "
              f"{'met' if worst <= 1.15 else 'NOT met'}."]
    return "\n".join(lines)


def write_section(path: Path, heading: str, body: str) -> None:
    """Replace (or append) the `## heading` section of a Markdown file."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start = text.find(f"\n## {heading}\n")
    section = f"\n## {heading}\n\n{body}\n"
    if start < 0:
        text = text.rstrip("\n") + "\n" + section
    else:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end:] if end >= 0 else "")
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phase", choices=PHASES)
    ap.add_argument("--n", type=int, default=0)
    ap.add_argument("--videos", type=int, default=50)
    ap.add_argument("--baseline-videos", type=int, default=8)
    ap.add_argument("--kind", choices=("single", "crowd"), default="single", help="clips of --phase (default: %(default)s)")
    ap.add_argument("--crowd-videos", type=int, default=20, help="videos of the six-person clips for ours and the baseline (default: %(default)s; 0 skips)")
    ap.add_argument("--compare-crops-per-face", type=int, default=None, metavar="K",
                    help="also scan the six-person clips with DFD_CROPS_PER_FACE=K (each face track classified in at most K frames), for comparison")
    ap.add_argument("--write", type=Path, help="Markdown file whose 'Detection' section gets the figures")
    ap.add_argument(
        "--glue-rounds", type=int, default=0,
        help="Only measure each model stage against bare ORT on the same batches, this many runs (fresh processes)",
    )
    ap.add_argument(
        "--isolation-rounds", type=int, default=0,
        help="Only compare media in child processes against in-thread decoding, this many rounds",
    )
    args = ap.parse_args(argv)
    if args.phase:
        print(json.dumps(PHASES[args.phase](args.n, args.kind)))
        return 0
    bench_bundle()
    benchmark_clips(12)
    if args.glue_rounds:
        runs = []
        for i in range(args.glue_rounds):
            runs.append(run_phase("models", 6))
            print(f"run {i + 1}: detection {runs[-1]['detect_ratio']:.3f}x, classification {runs[-1]['classify_ratio']:.3f}x "
                  f"bare ORT (load average {os.getloadavg()[0]:.1f})", flush=True)
        text = glue_report(runs)
        print(text)
        print(json.dumps(runs, indent=1), file=sys.stderr)
        if args.write:
            write_section(args.write, "Detection: model glue across runs", f"Measured {time.strftime('%Y-%m-%d')} with "
                          f"`python -m benchmarks.detection --glue-rounds {args.glue_rounds} --write {args.write}`.\n\n{text}")
        return 0
    if args.isolation_rounds:
        rounds = []
        for i in range(args.isolation_rounds):
            order = ("process", "thread") if i % 2 == 0 else ("thread", "process")
            rounds.append({m: run_phase("ours", args.videos, env={"DFD_MEDIA_ISOLATION": m}) for m in order})
            print(f"round {i + 1}: " + ", ".join(f"{m} {r['videos_per_s']:.2f} videos/s" for m, r in rounds[-1].items()),
                  flush=True)
        text = isolation_report(rounds)
        print(text)
        print(json.dumps(rounds, indent=1), file=sys.stderr)
        if args.write:
            stamp = time.strftime("%Y-%m-%d")
            write_section(args.write, "Detection: media isolation cost", f"Measured {stamp} with "
                          f"`python -m benchmarks.detection --isolation-rounds {args.isolation_rounds} "
                          f"--videos {args.videos} --write {args.write}`.\n\n{text}")
        return 0
    results = {
        "ours": run_phase("ours", args.videos),
        "baseline": run_phase("baseline", args.baseline_videos),
        "decode": run_phase("decode", 6),
        "models": run_phase("models", 6),
    }
    if args.crowd_videos:
        benchmark_clips(12, "crowd")
        results["crowd_ours"] = run_phase("ours", args.crowd_videos, "crowd")
        results["crowd_baseline"] = run_phase("baseline", max(2, args.baseline_videos // 2), "crowd")
        if args.compare_crops_per_face is not None:
            results["crowd_compare"] = run_phase(
                "ours", args.crowd_videos, "crowd", env={"DFD_CROPS_PER_FACE": str(args.compare_crops_per_face)})
    text = report(results)
    print(text)
    print(json.dumps(results, indent=1), file=sys.stderr)
    if args.write:
        stamp = time.strftime("%Y-%m-%d")
        write_section(args.write, "Detection (in-process scan)", f"Measured {stamp} with `python -m benchmarks.detection --write {args.write}`.\n\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
