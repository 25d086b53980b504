"""Self-blended pseudo-fakes and the training augmentations, on real carphone crops."""

from __future__ import annotations

import numpy as np
import pytest

from training.augment import Augment, jpeg
from training.dataset import DataError, landmarks_of, load_rgb, read_metadata
from training.synth import landmark_mask, self_blend, synthesize


@pytest.fixture
def face(prepared):
    row = next(r for r in read_metadata(prepared) if r["label"] == "real" and r["origin"] == "video")
    return load_rgb(prepared / row["crop"]), landmarks_of(row)


def test_mask_covers_the_inner_face_and_not_the_background(face):
    image, lm = face
    for seed in range(10):
        mask = landmark_mask(image.shape[:2], lm, np.random.default_rng(seed))
        assert mask.dtype == np.float32 and 0 <= mask.min() and mask.max() <= 1
        nose = lm[2].round().astype(int)
        assert mask[nose[1], nose[0]] > 0.9
        assert mask[0, 0] == 0 and mask[-1, -1] == 0 and mask[0, -1] == 0  # crop corners untouched


def test_self_blend_changes_the_face_inside_the_mask(face):
    image, lm = face
    fake, mask = self_blend(image, lm, np.random.default_rng(3))
    assert fake.shape == image.shape and fake.dtype == np.uint8
    diff = np.abs(fake.astype(int) - image.astype(int)).sum(axis=2)
    assert diff[mask > 0.5].mean() > 2  # the face region was altered
    # deterministic for a seed, different for another
    again, _ = self_blend(image, lm, np.random.default_rng(3))
    other, _ = self_blend(image, lm, np.random.default_rng(4))
    assert np.array_equal(fake, again) and not np.array_equal(fake, other)


def test_synthesize_adds_fakes_beside_their_parents(prepared, tmp_path):
    import shutil

    folder = tmp_path / "data"
    shutil.copytree(prepared, folder)
    before = read_metadata(folder)
    reals = [r for r in before if r["label"] == "real"]
    added = synthesize(folder, per_real=1, progress=False)
    assert added == len(reals)
    rows = read_metadata(folder)
    synth = [r for r in rows if r["origin"] == "synth"]
    parents = {r["crop"]: r for r in reals}
    for s in synth:
        parent = parents[s["source"]]
        assert s["label"] == "fake"
        assert (s["split"], s["group"]) == (parent["split"], parent["group"])  # no leakage across splits
        assert load_rgb(folder / s["crop"]).shape == load_rgb(folder / parent["crop"]).shape
    assert synthesize(folder, per_real=1, progress=False) == 0  # a rerun adds nothing
    assert len(read_metadata(folder)) == len(rows)


def test_synthesize_needs_real_crops(tmp_path):
    (tmp_path / "metadata.csv").write_text("crop,video,group,split,label,origin\na.png,v,g,train,fake,video\n")
    with pytest.raises(DataError, match="no real crops"):
        synthesize(tmp_path, progress=False)


def test_augment_keeps_shape_and_changes_pixels(face):
    image, _ = face
    rng = np.random.default_rng(0)
    out = Augment(flip=1.0, jpeg=0, blur=0, downscale=0, colour=0)(image, rng)
    assert np.array_equal(out, image[:, ::-1])
    out = Augment()(image, rng)
    assert out.shape == image.shape and out.dtype == np.uint8 and out.flags.c_contiguous
    assert np.abs(jpeg(image, 10).astype(int) - image.astype(int)).mean() > 1
