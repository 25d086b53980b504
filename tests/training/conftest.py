"""Tiny labelled video sets cut from carphone, and folders prepared from them, shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import pytest

from worker.media.encode import encode_clip

# 4 groups of 30 frames: two train, one val, one test. Each group has a real clip and a
# "fake" made from the same frames (blurred, recompressed): a stand-in the model can learn
# in a few steps, so the chain is checked end to end without any real deepfake.
SPLITS = ("train", "train", "val", "test")


@pytest.fixture(scope="session")
def carphone_frames(carphone):
    with av.open(str(carphone)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.fixture(scope="session")
def labelled_clips(carphone_frames, tmp_path_factory) -> Path:
    """Folder with real/ and fake/ clips plus manifest.csv (path,label,split,group)."""
    root = tmp_path_factory.mktemp("labelled")
    lines = ["path,label,split,group"]
    for i, split in enumerate(SPLITS):
        seg = carphone_frames[i * 30 : (i + 1) * 30]
        for label, frames, crf in (("real", seg, 23), ("fake", [cv2.GaussianBlur(f, (0, 0), 2.0) for f in seg], 40)):
            path = root / label / f"clip{i}.mp4"
            path.parent.mkdir(exist_ok=True)
            encode_clip(path, frames, fps=25, crf=crf)
            lines.append(f"{label}/clip{i}.mp4,{label},{split},clip{i}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def prepared(labelled_clips, tmp_path_factory) -> Path:
    """The clips prepared at 64 px (small: the tests train on CPU)."""
    from training.prepare import items_from_manifest, prepare

    out = tmp_path_factory.mktemp("prepared")
    prepare(items_from_manifest(labelled_clips / "manifest.csv"), out, input_size=64, progress=False)
    return out
