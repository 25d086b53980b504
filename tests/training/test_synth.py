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


def test_face_swap_pastes_the_donor_face_inside_the_target_head(prepared):
    from training.synth import face_swap

    rows = [r for r in read_metadata(prepared) if r["label"] == "real" and r["origin"] == "video"]
    target_row = rows[0]
    donor_row = next(r for r in rows if r["group"] != target_row["group"])
    target, donor = load_rgb(prepared / target_row["crop"]), load_rgb(prepared / donor_row["crop"])
    # a donor that is plainly someone else: mirrored and tinted, so its pixels can be told apart
    donor = np.ascontiguousarray(donor[:, ::-1])
    donor[..., 2] = np.clip(donor[..., 2].astype(int) + 60, 0, 255).astype(np.uint8)
    donor_lm = landmarks_of(donor_row).copy()
    donor_lm[:, 0] = donor.shape[1] - 1 - donor_lm[:, 0]
    donor_lm[[0, 1, 3, 4]] = donor_lm[[1, 0, 4, 3]]  # mirrored: left and right swap roles
    for seed in range(6):  # both masks, both blends
        fake, mask = face_swap(target, landmarks_of(target_row), donor, donor_lm, np.random.default_rng(seed))
        assert fake.shape == target.shape and fake.dtype == np.uint8
        changed = np.abs(fake.astype(int) - target.astype(int)).sum(axis=2)
        # inside the mask the face is another one; outside only the global blur and JPEG touch it
        assert changed[mask > 0.9].mean() > 1.5 * max(changed[mask == 0].mean(), 1.0)
        assert mask[0, 0] == 0 and mask[-1, -1] == 0


def test_faceswap_synth_takes_donors_of_other_identities_in_the_same_split(prepared, tmp_path):
    import shutil

    from training.dataset import check_groups

    folder = tmp_path / "data"
    shutil.copytree(prepared, folder)
    reals = {r["crop"]: r for r in read_metadata(folder) if r["label"] == "real"}
    assert synthesize(folder, progress=False) == len(reals)
    added = synthesize(folder, method="faceswap", per_real=1, seed=5, progress=False)
    # carphone clips 0 and 1 share the train split; val and test hold one group each: no donor there
    assert added == sum(1 for r in reals.values() if r["split"] == "train")
    rows = read_metadata(folder)
    swaps = [r for r in rows if r["manipulation"] == "face-swap"]
    assert len(swaps) == added
    for s in swaps:
        target, donor = reals[s["source"]], reals[s["donor"]]
        assert s["label"] == "fake" and s["origin"] == "synth"
        assert (s["group"], s["split"]) == (target["group"], target["split"])  # the fake joins its target's group
        assert donor["group"] != target["group"] and donor["split"] == target["split"]
    # one donor identity per target video
    donor_groups = {}
    for s in swaps:
        assert donor_groups.setdefault(s["video"], reals[s["donor"]]["group"]) == reals[s["donor"]]["group"]
    check_groups(rows)  # no group crosses splits, with every kind of fake made
    assert {r["manipulation"] for r in rows} == {"real", "fake", "self-blend", "face-swap"}
    import json

    synth_log = json.loads((folder / "prepare.json").read_text())["synth"]
    assert [(e["method"], e["seed"]) for e in synth_log] == [("sbi", 0), ("faceswap", 5)]
    assert synthesize(folder, method="faceswap", per_real=1, seed=5, progress=False) == 0  # resumable


def test_faceswap_needs_two_identities_in_a_split(prepared, tmp_path):
    import shutil

    folder = tmp_path / "data"
    shutil.copytree(prepared, folder)
    with pytest.raises(DataError, match="two identities"):
        synthesize(folder, method="faceswap", splits=("val",), progress=False)


def test_a_stronger_blend_changes_the_face_more_and_strength_one_is_the_stored_recipe(face):
    image, lm = face
    diffs = {}
    for strength in (1.0, 3.0):
        d = []
        for seed in range(12):
            fake, mask = self_blend(image, lm, np.random.default_rng(seed), strength)
            if strength > 1:
                assert mask.max() == pytest.approx(1.0)  # a curriculum's blend is always a full one
            d.append(np.abs(fake.astype(int) - image.astype(int))[mask > 0.5 * mask.max()].mean())
        diffs[strength] = np.mean(d)
    assert diffs[3.0] > 1.5 * diffs[1.0]
    default, _ = self_blend(image, lm, np.random.default_rng(5))
    one, _ = self_blend(image, lm, np.random.default_rng(5), 1.0)
    assert np.array_equal(default, one)
