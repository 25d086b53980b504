"""`dfd-train prepare`: labelled videos -> face crops + a metadata table, with the worker's own code.

Frames are sampled by `worker.media.decode.decode_frames`, faces found by the worker's
`FaceDetector` and cut by `worker.models.crops.crop_faces`, all driven by the same
`Settings`, so the crops a model is trained on are the crops the worker will feed it.
Videos are decoded in a thread pool; detection runs in the calling thread (ONNX Runtime
already uses every core). A rerun skips videos already done (keyed by content hash), so
an interrupted run loses nothing; unreadable videos are listed and skipped.
"""

from __future__ import annotations

import csv
import json
import logging
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from training.dataset import (
    LABELS,
    META_FIELDS,
    SPLITS,
    VIDEO_FIELDS,
    DataError,
    append_rows,
    check_groups,
    read_table,
    save_rgb,
    split_for,
    write_table,
)
from worker.models.bundle import file_sha256
from worker.settings import Settings
from worker.types import Detection, ScanError

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".3gp"}
# settings that change what a crop looks like: a prepared folder keeps one value of each
CROP_KEYS = ("input_size", "crop_margin", "align_faces", "frames_per_video", "detect_long_side", "face_score_threshold", "min_face_px", "max_faces_per_frame")


@dataclass
class VideoItem:
    path: Path
    label: str
    split: str = ""  # empty: decided from the group's hash
    group: str = ""  # empty: the video's content hash
    source: str = ""  # data set / camera / site the video comes from; empty: "default"
    manipulation: str = ""  # for fakes: how it was made; empty: "fake"


@dataclass
class PrepareReport:
    done: int = 0  # videos processed in this run
    skipped: int = 0  # already prepared by an earlier run
    crops: int = 0  # crops written in this run
    no_face: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    labels: dict[str, int] = field(default_factory=dict)  # videos per label in the whole folder


# --- inputs --------------------------------------------------------------------------------


def items_from_folder(root: Path) -> list[VideoItem]:
    """Videos under root/real/ and root/fake/ (any depth).

    A video's group is its file name without the suffix, so `fake/x.mp4` made from `real/x.mp4`
    lands in the same split; its source is the first folder below real/ or fake/ (if any).
    """
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    items = []
    for label in LABELS:
        sub = root / label
        if sub.is_dir():
            for p in sorted(sub.rglob("*")):
                if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file():
                    parts = p.relative_to(sub).parts
                    items.append(VideoItem(p, label, group=f"name:{p.stem}", source=parts[0] if len(parts) > 1 else ""))
    if not items:
        raise DataError(
            f"no videos found in {root}: expected subfolders real/ and fake/ holding video files "
            f"({', '.join(sorted(VIDEO_EXTENSIONS))}), or pass a CSV manifest (path,label[,split][,group])"
        )
    return items


def items_from_manifest(manifest: Path, allow_missing: bool = False) -> list[VideoItem]:
    """Rows `path,label[,split][,group][,source][,manipulation][,parent]`; paths relative to the manifest's folder.

    `parent` names the real video a fake was made from (its path as written in another row):
    the fake joins the parent's group. Rows of one group must not name two splits; rows of a
    group without a split take the split another row of the group names.
    """
    if not manifest.is_file():
        raise DataError(f"manifest {manifest} does not exist")
    with open(manifest, newline="") as f:
        reader = csv.DictReader(f)
        missing_cols = {"path", "label"} - set(reader.fieldnames or [])
        if missing_cols:
            raise DataError(f"manifest {manifest} lacks column(s) {sorted(missing_cols)}; "
                            "header must be path,label[,split][,group][,source][,manipulation][,parent]")
        rows = list(reader)
    if not rows:
        raise DataError(f"manifest {manifest} lists no videos")

    def cell(row, name):
        return (row.get(name) or "").strip()

    groups = {cell(row, "path"): cell(row, "group") or f"path:{cell(row, 'path')}" for row in rows}
    parents = {cell(row, "parent") for row in rows} - {""}
    parsed = []  # (line, row, label, split, group)
    for n, row in enumerate(rows, start=2):
        label = cell(row, "label").lower()
        if label not in LABELS:
            raise DataError(f"{manifest}:{n}: label {row.get('label')!r} must be 'real' or 'fake'")
        split = cell(row, "split").lower()
        if split and split not in SPLITS:
            raise DataError(f"{manifest}:{n}: split {split!r} must be one of {', '.join(SPLITS)} or empty")
        parent = cell(row, "parent")
        if parent and parent not in groups:
            raise DataError(f"{manifest}:{n}: parent {parent!r} is not the path of another row")
        own = cell(row, "path")
        group = groups[parent] if parent else cell(row, "group") or (groups[own] if own in parents else "")
        parsed.append((n, row, label, split, group))

    # one split per group: a clash is refused with its rows named, a gap filled from the group
    named: dict[str, tuple[str, int]] = {}
    clashes = []
    for n, _, _, split, group in parsed:
        if group and split:
            first = named.setdefault(group, (split, n))
            if first[0] != split:
                clashes.append(f"group {group!r}: {manifest.name}:{first[1]} says {first[0]}, {manifest.name}:{n} says {split}")
    if clashes:
        raise DataError(f"{manifest}: {len(clashes)} row(s) put one group into two splits (its faces would leak "
                        "between them):\n  " + "\n  ".join(clashes[:20]))
    if any(label == "fake" for _, _, label, _, _ in parsed) and "group" not in rows[0] and "parent" not in rows[0]:
        log.warning("manifest %s has fakes but no group or parent column: each video is its own group, so a fake "
                    "and the real video it was made from may land in different splits", manifest)

    items, missing = [], []
    for n, row, label, split, group in parsed:
        path = Path(cell(row, "path"))
        if not path.is_absolute():
            path = manifest.parent / path
        if not path.is_file():
            missing.append(f"{manifest.name}:{n}: {path}")
            continue
        split = split or (named[group][0] if group in named else "")
        items.append(VideoItem(path, label, split, group, cell(row, "source"), cell(row, "manipulation")))
    if missing and not allow_missing:
        shown = "\n  ".join(missing[:20]) + ("\n  ..." if len(missing) > 20 else "")
        raise DataError(f"{len(missing)} file(s) in the manifest do not exist (pass --allow-missing to skip them):\n  {shown}")
    for m in missing:
        log.warning("missing, skipped: %s", m)
    if not items:
        raise DataError(f"none of the {len(rows)} files in manifest {manifest} exist")
    return items


# --- crops -----------------------------------------------------------------------------------


def crop_landmarks(det: Detection, size: int, margin: float, align: bool) -> np.ndarray:
    """The detection's landmarks in the pixels of its crop, by the same maths as crop_faces."""
    from worker.models.crops import alignment_matrix, square_region

    if align:
        matrix, side = alignment_matrix(det.box, det.landmarks, margin)
        pts = np.c_[det.landmarks, np.ones(5)] @ matrix.T
    else:
        x0, y0, side = square_region(det.box, margin)
        pts = det.landmarks - np.array([x0, y0], np.float32)
    return (pts * (size / side)).astype(np.float32)


def face_rows(image: np.ndarray, detections: list[Detection], size: int, margin: float, align: bool):
    """(crop, row fields) per detection: the crop and the columns the metadata keeps about it."""
    from worker.models.crops import crop_faces

    crops = crop_faces(image, detections, size, margin, align)
    for k, (crop, det) in enumerate(zip(crops, detections)):
        lm = crop_landmarks(det, size, margin, align)
        row = {
            "face_index": k,
            "x1": round(float(det.box[0]), 1), "y1": round(float(det.box[1]), 1),
            "x2": round(float(det.box[2]), 1), "y2": round(float(det.box[3]), 1),
            "det_score": round(float(det.score), 4),
        }
        row.update({f"lm{i}{axis}": round(float(lm[i, j]), 2) for i in range(5) for j, axis in enumerate("xy")})
        yield crop, row


# --- the command -------------------------------------------------------------------------------


def _check_settings(out: Path, info: dict) -> None:
    path = out / "prepare.json"
    old = {}
    if path.exists():
        old = json.loads(path.read_text())
        changed = [k for k in CROP_KEYS if k in old and old[k] != info[k]]
        if changed:
            raise DataError(
                f"{out} was prepared with other crop settings ({', '.join(f'{k}: {old[k]} -> {info[k]}' for k in changed)}); "
                "use a new output folder so all crops match"
            )
    path.write_text(json.dumps(old | info, indent=2))  # keeps what synth recorded


def _decode(item: VideoItem, settings: Settings, done: dict):
    from worker.media.decode import decode_frames

    sha = file_sha256(item.path)
    if sha in done:  # the same content under another name: no need to decode it again
        return sha, None, None
    frames, video_info = decode_frames(item.path, settings)
    return sha, frames, video_info


def prepare(
    items: Sequence[VideoItem],
    out: str | Path,
    settings: Settings | None = None,
    *,
    input_size: int = 224,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    image_format: str = "png",
    detector=None,
    progress: bool = True,
) -> PrepareReport:
    """Crop every face of every video into `out`; returns what happened (also in videos.csv)."""
    settings = settings or Settings.from_env()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = {k: getattr(settings, k) for k in CROP_KEYS if k != "input_size"} | {"input_size": input_size}
    _check_settings(out, info)

    # Resume: videos recorded in videos.csv are done; crops of a video that was interrupted
    # mid-way (rows in metadata.csv but no videos.csv entry) are dropped and redone.
    videos = {r["video"]: r for r in read_table(out / "videos.csv") if r["status"] in ("ok", "no_face")}
    meta_rows = read_table(out / "metadata.csv")
    kept = [r for r in meta_rows if r["origin"] != "video" or r["video"] in videos]
    if len(kept) != len(meta_rows):
        write_table(out / "metadata.csv", META_FIELDS, kept)
    done_paths = {r["path"]: r["video"] for r in videos.values()}

    report = PrepareReport()
    todo = []
    for item in items:
        if str(item.path) in done_paths:
            report.skipped += 1
        else:
            todo.append(item)

    if todo:
        if detector is None:
            from worker.models.retinaface import FaceDetector

            detector = FaceDetector(settings)
        with ThreadPoolExecutor(max(1, settings.decode_threads)) as pool:
            futures = {pool.submit(_decode, item, settings, videos): item for item in todo}
            bar = tqdm(as_completed(futures), total=len(futures), desc="prepare", unit="video", disable=not progress)
            for future in bar:
                item = futures[future]
                try:
                    sha, frames, _ = future.result()
                except ScanError as exc:
                    report.failed.append((str(item.path), exc.reason))
                    log.warning("skipped unreadable video %s: %s", item.path, exc.reason)
                    continue
                except Exception as exc:  # a broken file must not stop a long run
                    report.failed.append((str(item.path), f"{type(exc).__name__}: {exc}"))
                    log.warning("skipped video %s: %s", item.path, exc)
                    continue
                if frames is None or sha in videos:
                    report.skipped += 1
                    continue
                n = _prepare_video(item, sha, frames, out, settings, input_size, val_fraction, test_fraction, image_format, detector, videos)
                report.done += 1
                report.crops += n
                if n == 0:
                    report.no_face.append(str(item.path))
                bar.set_postfix(crops=report.crops, failed=len(report.failed))

    check_groups(read_table(out / "metadata.csv"), str(out / "metadata.csv"))
    for v in videos.values():
        if v["status"] == "ok":
            report.labels[v["label"]] = report.labels.get(v["label"], 0) + 1
    if not report.labels:
        reasons = "; ".join(f"{p}: {r}" for p, r in report.failed[:5])
        raise DataError(
            f"no faces were prepared: {len(report.failed)} video(s) unreadable, {len(report.no_face)} without a detectable face"
            + (f" ({reasons})" if reasons else "")
        )
    return report


def _prepare_video(item, sha, frames, out, settings, size, val_fraction, test_fraction, image_format, detector, videos) -> int:
    group = item.group or sha
    split = item.split or split_for(group, val_fraction, test_fraction)
    detections = detector.detect([f.image for f in frames]) if frames else []
    rows = []
    for frame, dets in zip(frames, detections):
        for crop, fields in face_rows(frame.image, dets, size, settings.crop_margin, settings.align_faces):
            rel = Path("crops") / item.label / sha[:16] / f"f{frame.index:03d}_{fields['face_index']}.{image_format}"
            save_rgb(out / rel, crop)
            rows.append({
                "crop": rel.as_posix(), "video": sha, "group": group, "split": split, "label": item.label,
                "origin": "video", "source": str(item.path), "frame_index": frame.index,
                "time_s": round(frame.time_s, 3), **fields, "dataset": item.source or "default",
                "manipulation": "real" if item.label == "real" else item.manipulation or "fake",
            })
    append_rows(out / "metadata.csv", META_FIELDS, rows)
    record = {
        "video": sha, "path": str(item.path), "label": item.label, "group": group, "split": split,
        "status": "ok" if rows else "no_face", "reason": "" if rows else "no face detected in any sampled frame",
        "frames": len(frames), "faces": len(rows),
    }
    append_rows(out / "videos.csv", VIDEO_FIELDS, [record])  # written last: marks the video done
    videos[sha] = record
    return len(rows)


def prepare_images(
    images: Sequence[tuple],
    out: str | Path,
    settings: Settings | None = None,
    *,
    input_size: int = 224,
    detector=None,
    progress: bool = False,
) -> int:
    """Add faces from still images: (name, RGB image, label, group, split[, source]) each; returns crops added.

    Same detector and crop code as videos (a still is a one-frame video); names already in
    the metadata are skipped, so this too can be rerun.
    """
    settings = settings or Settings.from_env()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = {k: getattr(settings, k) for k in CROP_KEYS if k != "input_size"} | {"input_size": input_size}
    _check_settings(out, info)
    done = {r["video"] for r in read_table(out / "metadata.csv") if r["origin"] == "image"}
    todo = [im for im in images if im[0] not in done]
    if not todo:
        return 0
    if detector is None:
        from worker.models.retinaface import FaceDetector

        detector = FaceDetector(settings)
    rows = []
    batches = [todo[i : i + 16] for i in range(0, len(todo), 16)]
    with tqdm(total=len(todo), desc="prepare stills", unit="image", disable=not progress) as bar:
        for batch in batches:
            for item, dets in zip(batch, detector.detect([im[1] for im in batch])):
                name, image, label, group, split = item[:5]
                source = item[5] if len(item) > 5 else "default"
                for crop, fields in face_rows(image, dets, input_size, settings.crop_margin, settings.align_faces):
                    rel = Path("crops") / label / "images" / f"{name}_{fields['face_index']}.png"
                    save_rgb(out / rel, crop)
                    rows.append({"crop": rel.as_posix(), "video": name, "group": group, "split": split, "label": label,
                                 "origin": "image", "source": name, "frame_index": 0, "time_s": 0.0, **fields,
                                 "dataset": source, "manipulation": "real" if label == "real" else "fake"})
                bar.update()
    append_rows(out / "metadata.csv", META_FIELDS, rows)
    check_groups(read_table(out / "metadata.csv"), str(out / "metadata.csv"))
    return len(rows)


def add_arguments(p) -> None:
    p.add_argument("input", type=Path, help="folder with real/ and fake/ subfolders, or a CSV manifest "
                   "(path,label[,split][,group][,source][,manipulation][,parent])")
    p.add_argument("out", type=Path, help="output folder (crops/, metadata.csv, videos.csv); rerun to resume")
    p.add_argument("--input-size", type=int, default=224, help="crop side in pixels = the model's input size")
    p.add_argument("--val", type=float, default=0.15, help="fraction of groups for validation (when the manifest gives no split)")
    p.add_argument("--test", type=float, default=0.15, help="fraction of groups for test")
    p.add_argument("--format", choices=("png", "jpg"), default="png", help="crop image format (png: lossless)")
    p.add_argument("--allow-missing", action="store_true", help="skip manifest rows whose file does not exist")


def run(args) -> int:
    items = items_from_manifest(args.input, args.allow_missing) if args.input.is_file() else items_from_folder(args.input)
    report = prepare(items, args.out, input_size=args.input_size, val_fraction=args.val, test_fraction=args.test, image_format=args.format)
    print(f"prepared {report.done} video(s) ({report.crops} crops), {report.skipped} already done, "
          f"{len(report.no_face)} without faces, {len(report.failed)} unreadable")
    for path, reason in report.failed:
        print(f"  unreadable: {path}: {reason}")
    print(f"videos with faces per label: {report.labels}")
    if len(report.labels) < 2:
        only = next(iter(report.labels))
        print(f"note: only '{only}' videos so far; training needs both classes"
              + (" (run `dfd-train synth` to make pseudo-fakes from real crops)" if only == "real" else ""))
    return 0
