"""Blend carriers (training.patches): real patches of shipped footage and photos, self-blended like faces."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from training import patches
from training.dataset import landmarks_of, load_rgb, read_metadata
from training.synth import blend_pair, landmark_mask, self_blend, synthesize


@pytest.fixture(scope="module")
def images():
    return patches.natural_images(video_frames=4)


def test_natural_images_are_shipped_photos_and_bikes_frames_never_carphone(images):
    names = [n for n, _ in images]
    assert len(names) >= 12 and sum(n.startswith("bikes-") for n in names) == 4
    assert {"chelsea", "coffee", "astronaut"} <= set(names)
    assert not any("carphone" in n for n in names)
    assert all(im.ndim == 3 and im.shape[2] == 3 and im.dtype == np.uint8 for _, im in images)


def test_patches_join_the_training_split_with_face_landmarks_and_no_carphone(prepared, images, tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(prepared, folder)
    before = read_metadata(folder)
    added = patches.add_patches(folder, images, per_image=3)
    assert added == 3 * len(images)
    assert patches.add_patches(folder, images, per_image=3) == 0  # a rerun adds nothing
    rows = read_metadata(folder)
    new = [r for r in rows if r["crop"] not in {b["crop"] for b in before}]
    assert len(new) == added
    for row in new:
        assert (row["split"], row["label"], row["dataset"]) == ("train", "real", "patches")
        assert "carphone" not in row["crop"] and "carphone" not in row["source"]
        lm = landmarks_of(row)
        image = load_rgb(folder / row["crop"])
        assert image.shape == load_rgb(folder / before[0]["crop"]).shape
        assert lm is not None and (lm >= 0).all() and (lm < image.shape[0]).all()
    # the synth makes a self-blend of each patch like of any face, in the training split
    synthesize(folder, per_real=1, progress=False)
    blends = [r for r in read_metadata(folder) if r["manipulation"] == "self-blend" and r["dataset"] == "patches"]
    assert len(blends) == added and {r["split"] for r in blends} == {"train"}


def test_a_carphone_image_is_refused(prepared, tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(prepared, folder)
    with pytest.raises(ValueError, match="carphone"):
        patches.add_patches(folder, [("carphone-0001", np.zeros((100, 100, 3), np.uint8))], per_image=1)


def test_a_self_blend_is_its_target_outside_the_mask_and_its_source_inside(images):
    rng = np.random.default_rng(0)
    name, image = images[1]
    patch = patches.random_patch(image, 64, rng)
    pool = np.array([[[22, 26], [42, 26], [32, 35], [24, 45], [40, 45]]], np.float32)
    lm = patches.face_layout(pool, 64, rng)
    for seed in range(6):
        fake, mask = self_blend(patch, lm, np.random.default_rng(seed))
        again = np.random.default_rng(seed)
        source, target = blend_pair(patch, again)
        full = landmark_mask(patch.shape[:2], lm, again)
        assert mask.max() > 0 and np.allclose(mask / mask.max(), full)  # the same face-shaped mask, scaled by the ratio
        outside, inside = mask == 0, mask >= 0.999
        assert outside.sum() > 0.3 * mask.size and np.array_equal(fake[outside], target[outside])
        if inside.any():
            assert np.array_equal(fake[inside], source[inside])
        # and the two differ: a blend where source and target were the same picture would teach nothing
        assert np.abs(source.astype(int) - target.astype(int)).mean() > 0.5


def test_face_layouts_stay_in_the_crop_and_near_the_pool():
    pool = np.array([[[22, 26], [42, 26], [32, 35], [24, 45], [40, 45]]], np.float32)
    rng = np.random.default_rng(1)
    layouts = np.array([patches.face_layout(pool, 64, rng) for _ in range(200)])
    assert (layouts >= 2).all() and (layouts <= 61).all()
    assert np.abs(layouts.mean(0) - pool[0]).max() < 3  # jitter around the real layout, not a drift
    assert layouts[:, 0, 0].std() > 1  # but jittered


def _dotted_face():
    """A grey picture with a coloured disc at each of 5 face landmarks (eyes, nose, mouth corners)."""
    import cv2

    image = np.full((400, 400, 3), 128, np.uint8)
    lm = np.array([[160, 160], [240, 160], [200, 200], [170, 240], [230, 240]], np.float32)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    for p, c in zip(lm, colours):
        cv2.circle(image, (int(p[0]), int(p[1])), 12, c, -1)
    return image, lm, colours


def test_face_crops_keep_their_landmarks_on_the_face_left_to_right():
    image, lm, colours = _dotted_face()
    rng = np.random.default_rng(0)
    for _ in range(20):
        crop, out = patches.face_crop(image, lm, 64, rng)
        assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8
        on_dots = [tuple(crop[int(round(y)), int(round(x))]) for x, y in out]
        assert all(c in colours for c in on_dots), on_dots  # every landmark still sits on its disc
        assert out[0, 0] < out[1, 0] and out[3, 0] < out[4, 0]  # mirrored crops swap left and right
        assert sorted(on_dots) == sorted(colours)


def test_face_crops_join_their_still_group_in_training_and_carphone_is_refused(prepared, tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(prepared, folder)
    image, lm, _ = _dotted_face()
    assert patches.add_face_crops(folder, [("dots", image, lm, "dots")], per_face=5) == 5
    assert patches.add_face_crops(folder, [("dots", image, lm, "dots")], per_face=5) == 0
    rows = [r for r in read_metadata(folder) if r["group"] == "dots"]
    assert len(rows) == 5 and {(r["split"], r["label"], r["dataset"]) for r in rows} == {("train", "real", "patches")}
    with pytest.raises(ValueError, match="carphone"):
        patches.add_face_crops(folder, [("carphone-0", image, lm, "carphone-0")], per_face=1)
    val_group = next(r["group"] for r in read_metadata(folder) if r["split"] == "val")
    with pytest.raises(ValueError, match="not train"):
        patches.add_face_crops(folder, [("x", image, lm, val_group)], per_face=1)


def test_the_order_prepare_wrote_rows_in_changes_no_patch_blend_or_swap(prepared, images, tmp_path):
    """prepare writes each video's rows when its decode finishes; two builds of the same data must
    still make the same carriers, blends and swaps (landmark pools, donors drawn from the rows)."""
    import csv

    made = []
    for name, order in (("as-written", 1), ("reversed", -1)):
        folder = tmp_path / name
        shutil.copytree(prepared, folder)
        with open(folder / "metadata.csv", newline="") as f:
            reader = csv.DictReader(f)
            fields, rows = reader.fieldnames, list(reader)
        with open(folder / "metadata.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows[::order])
        patches.add_patches(folder, images[:3], per_image=4)
        synthesize(folder, per_real=1, progress=False)
        synthesize(folder, per_real=1, method="faceswap", progress=False)
        made.append({r["crop"]: (r, (folder / r["crop"]).read_bytes()) for r in read_metadata(folder)})
    assert made[0].keys() == made[1].keys()
    assert all(made[0][k][1] == made[1][k][1] for k in made[0])  # every crop, byte for byte
    assert all(made[0][k][0]["donor"] == made[1][k][0]["donor"] for k in made[0])
