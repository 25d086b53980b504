"""dfd-train prepare on real clips: crops, metadata, splits, resume, and every kind of bad input."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest

from training.cli import main
from training.dataset import DataError, landmarks_of, load_rgb, read_metadata, read_table
from training.prepare import items_from_folder, items_from_manifest, prepare
from worker.settings import Settings


def test_prepare_writes_crops_and_metadata(prepared):
    rows = read_metadata(prepared)
    videos = read_table(prepared / "videos.csv")
    assert len(videos) == 8 and all(v["status"] == "ok" for v in videos)
    assert {r["label"] for r in rows} == {"real", "fake"}
    # carphone has a face in every frame: about frames_per_video crops per clip
    per_video = {v["video"]: int(v["faces"]) for v in videos}
    assert all(n >= 8 for n in per_video.values()), per_video
    for row in rows[:5]:
        crop = load_rgb(prepared / row["crop"])
        assert crop.shape == (64, 64, 3)
        assert float(row["det_score"]) >= Settings().face_score_threshold
        assert float(row["x2"]) > float(row["x1"]) and float(row["y2"]) > float(row["y1"])
        lm = landmarks_of(row)
        # landmarks in crop pixels: inside the crop, eyes above the mouth, left eye left of right eye
        assert (lm >= 0).all() and (lm < 64).all()
        assert lm[0, 0] < lm[1, 0] and lm[:2, 1].mean() < lm[3:, 1].mean()


def test_splits_follow_groups_never_frames(prepared):
    rows = read_metadata(prepared)
    split_of_group = {}
    for r in rows:
        assert split_of_group.setdefault(r["group"], r["split"]) == r["split"], "a group spans two splits"
    assert split_of_group == {"clip0": "train", "clip1": "train", "clip2": "val", "clip3": "test"}


def test_folder_groups_by_file_name_and_splits_by_group_hash(labelled_clips, tmp_path):
    items = items_from_folder(labelled_clips)  # no manifest: groups from names, splits from the group's hash
    out = tmp_path / "a"
    prepare(items, out, input_size=48, val_fraction=0.3, test_fraction=0.3, progress=False)
    splits = {}
    for r in read_metadata(out):
        assert splits.setdefault(r["group"], r["split"]) == r["split"]
    from training.dataset import split_for

    assert all(split_for(g, 0.3, 0.3) == s for g, s in splits.items())
    # fake/clipN.mp4 was made from real/clipN.mp4: both in one group, so one split
    assert sorted(splits) == [f"name:clip{i}" for i in range(4)]
    videos = read_table(out / "videos.csv")
    for i in range(4):
        assert len({v["split"] for v in videos if v["path"].endswith(f"clip{i}.mp4")}) == 1


def test_manifest_putting_one_group_in_two_splits_is_refused_with_its_rows(labelled_clips, tmp_path):
    manifest = tmp_path / "m.csv"
    real, fake = labelled_clips / "real" / "clip0.mp4", labelled_clips / "fake" / "clip0.mp4"
    manifest.write_text(f"path,label,split,group\n{real},real,train,anna\n{fake},fake,train,anna\n"
                        f"{labelled_clips / 'real' / 'clip1.mp4'},real,test,anna\n")
    with pytest.raises(DataError, match=r"group 'anna': m\.csv:2 says train, m\.csv:4 says test"):
        items_from_manifest(manifest)
    assert main(["prepare", str(manifest), str(tmp_path / "out")]) == 2


def test_manifest_fakes_join_their_parents_group_and_split(labelled_clips, tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,split,group,source,manipulation,parent\n"
                        "real/clip0.mp4,real,val,,studio,,\n"
                        "fake/clip0.mp4,fake,,,studio,blur,real/clip0.mp4\n"
                        "real/clip1.mp4,real,,bob,studio,,\n")
    shutil.copytree(labelled_clips / "real", tmp_path / "real")
    shutil.copytree(labelled_clips / "fake", tmp_path / "fake")
    items = items_from_manifest(manifest)
    assert items[1].group == items[0].group == "path:real/clip0.mp4"
    assert items[1].split == "val"  # taken from the parent's group
    prepare(items, tmp_path / "out", input_size=48, progress=False)
    rows = read_metadata(tmp_path / "out")
    assert {(r["label"], r["dataset"], r["manipulation"]) for r in rows} == {
        ("real", "studio", "real"), ("fake", "studio", "blur")}
    assert {r["split"] for r in rows if r["group"] == "path:real/clip0.mp4"} == {"val"}


def test_metadata_with_a_group_in_two_splits_is_refused(prepared, tmp_path):
    from training.dataset import check_groups

    rows = read_metadata(prepared)
    check_groups(rows)  # the prepared folder is sound
    moved = next(r for r in rows if r["split"] == "train")
    bad = [dict(r) for r in rows]
    bad[rows.index(moved)]["split"] = "test"
    with pytest.raises(DataError, match=rf"group '{moved['group']}' is in train \(\d+ crops, e\.g\. .*\) and test \(1 crops, e\.g\. {moved['crop']}\)"):
        check_groups(bad)


def test_rerun_keeps_prepared_work_and_resumes_an_interrupted_video(labelled_clips, tmp_path):
    items = items_from_manifest(labelled_clips / "manifest.csv")
    out = tmp_path / "p"
    first = prepare(items[:4], out, input_size=48, progress=False)
    assert first.done == 4
    crop_files = {p: p.stat().st_mtime_ns for p in (out / "crops").rglob("*.png")}
    rows_before = read_metadata(out)

    # simulate a crash after the crops of a 5th video were listed but before it was marked done
    fake_row = dict(rows_before[0], video="deadbeef", crop="crops/real/deadbeef/f000_0.png")
    with open(out / "metadata.csv", "a", newline="") as f:
        csv.DictWriter(f, fieldnames=list(fake_row)).writerow(fake_row)

    second = prepare(items, out, input_size=48, progress=False)
    assert second.skipped == 4 and second.done == 4
    for p, mtime in crop_files.items():  # nothing already prepared was rewritten or lost
        assert p.stat().st_mtime_ns == mtime
    rows_after = read_metadata(out)
    assert "deadbeef" not in {r["video"] for r in rows_after}
    assert len({r["crop"] for r in rows_after}) == len(rows_after)  # no duplicate rows
    assert len(read_table(out / "videos.csv")) == 8

    third = prepare(items, out, input_size=48, progress=False)
    assert (third.done, third.skipped) == (0, 8) and len(read_metadata(out)) == len(rows_after)


def test_same_content_under_another_name_is_not_redone(labelled_clips, tmp_path):
    out = tmp_path / "p"
    items = items_from_manifest(labelled_clips / "manifest.csv")[:1]
    prepare(items, out, input_size=48, progress=False)
    copy = tmp_path / "copy.mp4"
    shutil.copy(items[0].path, copy)
    items[0].path = copy
    report = prepare(items, out, input_size=48, progress=False)
    assert (report.done, report.skipped) == (0, 1)


def test_changed_crop_settings_are_refused(labelled_clips, tmp_path):
    items = items_from_manifest(labelled_clips / "manifest.csv")[:1]
    prepare(items, tmp_path, input_size=48, progress=False)
    with pytest.raises(DataError, match="input_size: 48 -> 64"):
        prepare(items, tmp_path, input_size=64, progress=False)


def test_empty_folder_is_a_clear_message(tmp_path, capsys):
    (tmp_path / "real").mkdir()
    with pytest.raises(DataError, match="no videos found"):
        items_from_folder(tmp_path)
    assert main(["prepare", str(tmp_path), str(tmp_path / "out")]) == 2
    assert "no videos found" in capsys.readouterr().err


def test_unreadable_videos_are_reported_and_skipped(labelled_clips, tmp_path, no_face_clip):
    root = tmp_path / "videos"
    (root / "real").mkdir(parents=True)
    (root / "fake").mkdir()
    shutil.copy(labelled_clips / "real" / "clip0.mp4", root / "real" / "good.mp4")
    shutil.copy(labelled_clips / "fake" / "clip0.mp4", root / "fake" / "good.mp4")
    (root / "real" / "broken.mp4").write_bytes(b"\x00\x01 this is not a video" * 50)
    (root / "fake" / "empty.mp4").write_bytes(b"")
    shutil.copy(no_face_clip, root / "real" / "no_face.mp4")
    report = prepare(items_from_folder(root), tmp_path / "out", input_size=48, progress=False)
    assert sorted(p.split("/")[-1] for p, _ in report.failed) == ["broken.mp4", "empty.mp4"]
    assert all(reason for _, reason in report.failed)
    assert [p.split("/")[-1] for p in report.no_face] == ["no_face.mp4"]
    assert report.labels == {"real": 1, "fake": 1}
    assert report.crops > 0


def test_nothing_readable_is_a_clear_error(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a.mp4").write_bytes(b"garbage")
    with pytest.raises(DataError, match="no faces were prepared: 1 video\\(s\\) unreadable"):
        prepare(items_from_folder(tmp_path), tmp_path / "out", progress=False)


def test_manifest_with_missing_files(labelled_clips, tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "path,label\n"
        f"{labelled_clips / 'real' / 'clip0.mp4'},real\n"
        f"{labelled_clips / 'fake' / 'clip0.mp4'},fake\n"
        "missing/nowhere.mp4,fake\n"
    )
    with pytest.raises(DataError, match=r"(?s)1 file\(s\) in the manifest do not exist.*m\.csv:4: .*nowhere\.mp4"):
        items_from_manifest(manifest)
    assert len(items_from_manifest(manifest, allow_missing=True)) == 2


def test_manifest_bad_rows(tmp_path):
    bad_label = tmp_path / "a.csv"
    bad_label.write_text("path,label\nx.mp4,maybe\n")
    with pytest.raises(DataError, match="label 'maybe' must be 'real' or 'fake'"):
        items_from_manifest(bad_label)
    no_cols = tmp_path / "b.csv"
    no_cols.write_text("file,kind\nx.mp4,real\n")
    with pytest.raises(DataError, match="lacks column"):
        items_from_manifest(no_cols)


def test_one_class_prepares_but_training_says_what_is_missing(labelled_clips, tmp_path, capsys):
    root = tmp_path / "videos" / "real"
    root.mkdir(parents=True)
    for i in (0, 2):
        shutil.copy(labelled_clips / "real" / f"clip{i}.mp4", root / f"clip{i}.mp4")
    out = tmp_path / "out"
    assert main(["prepare", str(root.parent), str(out), "--input-size", "48"]) == 0
    assert "only 'real' videos so far" in capsys.readouterr().out
    from training.train import train

    with pytest.raises(DataError, match="no 'fake' crops.*dfd-train synth"):
        train(out, tmp_path / "run", max_steps=1)


def test_aligned_crops_have_level_eyes(labelled_clips, tmp_path):
    items = items_from_manifest(labelled_clips / "manifest.csv")[:1]
    prepare(items, tmp_path, Settings(align_faces=True), input_size=64, progress=False)
    lms = np.stack([landmarks_of(r) for r in read_metadata(tmp_path)])
    assert np.abs(lms[:, 0, 1] - lms[:, 1, 1]).max() < 0.5  # eye y equal after alignment
