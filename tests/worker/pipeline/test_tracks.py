"""Face tracks: boxes across sampled frames -> tracks, crops spread over a track, per-track verdicts."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from worker.pipeline.aggregate import STRATEGIES, aggregate
from worker.pipeline.tracks import (
    MAX_GAP,
    MIN_TRACK_FRAMES,
    counted,
    early_label_tracks,
    link_tracks,
    spread,
    video_score,
)


def _box(cx, cy, side=100):
    return [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]


def _ids(tracks, n_frames):
    """track index of each (frame, detection)"""
    out = {}
    for k, tr in enumerate(tracks):
        for t, d in tr.members:
            assert (t, d) not in out
            out[(t, d)] = k
    return out


def test_six_still_heads_give_six_tracks_whatever_order_the_detector_lists_them():
    centres = [(200 + 400 * c, 180 + 360 * r) for r in range(2) for c in range(3)]
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(10):
        order = rng.permutation(6)
        frames.append([_box(*centres[i], side=200 + rng.normal(0, 5)) for i in order])
    tracks = link_tracks(frames)
    assert len(tracks) == 6 and all(len(t.members) == 10 for t in tracks)
    for tr in tracks:  # every member of a track is the same head
        heads = {int(np.argmin([np.hypot(frames[t][d][0] - c[0] + 100, frames[t][d][1] - c[1] + 100) for c in centres]))
                 for t, d in tr.members}
        assert len(heads) == 1


def test_a_face_that_moves_more_than_its_box_overlaps_keeps_its_track():
    # 100 px face moving 45 px per sampled frame: IoU 0.38 then less when it speeds up
    xs = [100, 145, 190, 250, 310]
    tracks = link_tracks([[_box(x, 300)] for x in xs])
    assert len(tracks) == 1 and [t for t, _ in tracks[0].members] == list(range(5))


def test_faces_far_apart_or_of_very_different_size_are_different_tracks():
    assert len(link_tracks([[_box(100, 100)], [_box(400, 100)]])) == 2
    assert len(link_tracks([[_box(100, 100, side=60)], [_box(100, 100, side=200)]])) == 2


def test_a_track_survives_short_gaps_but_not_long_ones():
    one = _box(300, 300)
    assert MAX_GAP == 4
    tracks = link_tracks([[one], [], [], [], [], [one]])  # hidden for 4 frames: same face
    assert len(tracks) == 1
    tracks = link_tracks([[one], [], [], [], [], [], [one]])  # 5 frames: a new track
    assert len(tracks) == 2


def test_each_track_takes_at_most_one_face_per_frame():
    # two overlapping faces in frame 1 after one face in frame 0
    tracks = link_tracks([[_box(300, 300)], [_box(300, 300), _box(330, 300)]])
    assert len(tracks) == 2
    ids = _ids(tracks, 2)
    assert ids[(0, 0)] == ids[(1, 0)] != ids[(1, 1)]  # the better overlap continues the track


def test_no_faces_no_tracks():
    assert link_tracks([[], [], []]) == []


@pytest.mark.parametrize("n, k", [(10, 4), (10, 3), (7, 4), (40, 5), (5, 5), (3, 4), (10, 0), (1, 1), (10, 1)])
def test_spread_picks_at_most_k_distinct_positions_over_the_whole_track(n, k):
    got = spread(n, k)
    assert got == sorted(set(got)) and all(0 <= i < n for i in got)
    if k <= 0 or n <= k:
        assert got == list(range(n))
        return
    assert len(got) == k
    # spread: every one of k equal parts of the track holds one chosen position
    for part, i in enumerate(got):
        assert part * n / k <= i < (part + 1) * n / k


def test_one_fake_track_among_real_ones_flags_the_video():
    real = [[0.05, 0.1, 0.08, 0.1]] * 5
    fake = [[0.9, 0.85, 0.95, 0.9]]
    lengths = [10] * 6
    for strategy in STRATEGIES:
        score, per_track = video_score(real + fake, lengths, strategy)
        assert score == pytest.approx(per_track[-1]) and score > 0.8
        # the old per-frame view would have mixed them: a mean over all faces is diluted
        assert np.mean(real + fake) < 0.5


def test_one_track_is_exactly_the_video_aggregation():
    scores = [0.1, 0.7, 0.4, 0.9, 0.2]
    for strategy in STRATEGIES:
        assert video_score([scores], [5], strategy)[0] == pytest.approx(aggregate(scores, strategy))


def test_a_one_frame_track_does_not_decide_while_a_longer_one_exists():
    assert MIN_TRACK_FRAMES == 2
    assert counted([10, 1, 3]) == [True, False, True]
    assert counted([1, 1]) == [True, True]  # nothing longer: they count
    score, _ = video_score([[0.1, 0.1], [0.99]], [8, 1], "mean")
    assert score == pytest.approx(0.1)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_early_label_over_tracks_is_the_label_of_every_completion(strategy):
    rng = np.random.default_rng(3)
    grid = np.linspace(0, 1, 5)
    decided = 0
    for _ in range(150):
        n_tracks = int(rng.integers(1, 4))
        known = [np.clip(rng.normal(rng.choice([0.05, 0.95]), 0.1, rng.integers(1, 4)), 0, 1) for _ in range(n_tracks)]
        unknown = [int(rng.integers(0, 3)) for _ in range(n_tracks)]
        lengths = [len(k) + u for k, u in zip(known, unknown)]
        threshold = float(rng.choice([0.3, 0.5, 0.7]))
        got = early_label_tracks(list(zip(known, unknown)), lengths, strategy, threshold)
        if got is None:
            continue
        decided += 1
        is_fake, bound = got
        total = sum(unknown)
        for rest in itertools.product(grid, repeat=total):
            it = iter(rest)
            full = [np.concatenate([k, [next(it) for _ in range(u)]]) for k, u in zip(known, unknown)]
            score, _ = video_score(full, lengths, strategy)
            assert (score >= threshold) == is_fake
            assert (score >= bound - 1e-6) if is_fake else (score <= bound + 1e-6)
    assert decided > 0


# -- in the scanner, on real footage ------------------------------------------------------


@pytest.fixture(scope="module")
def panel_clip(carphone, tmp_path_factory):
    """Six carphone talking heads in a 3x2 grid, each at its own point of the clip: 4 s at 10 fps."""
    import av

    from worker.media.encode import encode_clip

    with av.open(str(carphone)) as c:
        src = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    frames = []
    for i in range(40):
        tiles = [src[(i * 3 + 17 * k) % len(src)] for k in range(6)]
        tiles = [t[:, ::-1] if k % 2 else t for k, t in enumerate(tiles)]
        frames.append(np.ascontiguousarray(np.vstack([np.hstack(tiles[:3]), np.hstack(tiles[3:])])))
    return encode_clip(tmp_path_factory.mktemp("panel") / "panel.mp4", frames, fps=10)


@pytest.fixture(scope="module")
def scan_panel(untrained_bundle, panel_clip):
    from worker.pipeline.scanner import Scanner
    from worker.settings import Settings
    from worker.types import ScanRequest

    def scan(**kw):
        scanner = Scanner(Settings(model_dir=str(untrained_bundle.path), max_faces_per_frame=6, **kw))
        (v,) = scanner.scan([ScanRequest("panel", str(panel_clip))], extra_roots=[str(panel_clip.parent)])
        return v

    return scan


@pytest.mark.parametrize("k", [1, 3])
def test_classified_crops_are_bounded_by_tracks_times_k(scan_panel, k):
    every = scan_panel(crops_per_face=0)
    v = scan_panel(crops_per_face=k)
    assert v.label in ("fake", "real")
    # six heads that stay in place: six tracks, each seen in (nearly) every sampled frame
    assert len(v.tracks) == len(every.tracks) == 6
    assert all(t["frames_seen"] >= 0.9 * v.frames_sampled for t in v.tracks)
    assert len(every.faces) == sum(t["frames_seen"] for t in every.tracks)  # 0: every face
    assert len(v.faces) <= len(v.tracks) * k < len(every.faces)
    for track in v.tracks:
        assert len(track["faces"]) == min(k, track["frames_seen"])
        members = [v.faces[i] for i in track["faces"]]
        assert len({f.frame_index for f in members}) == len(members)  # one face per frame
        # one head: every box of the track lies in the same tile of the grid
        assert len({(int((f.box[0] + f.box[2]) / 2 // 176), int((f.box[1] + f.box[3]) / 2 // 144)) for f in members}) == 1
        assert track["counted"] and track["score"] == pytest.approx(np.mean([f.fake_score for f in members]), abs=1e-5)
    # the video score is the highest track score (aggregation mean of the untrained bundle)
    assert v.aggregation == "mean"
    assert v.score == pytest.approx(max(t["score"] for t in v.tracks), abs=1e-5)
    assert v.to_dict()["tracks"] == v.tracks


def test_the_same_crops_score_the_same_with_or_without_sampling(scan_panel):
    # the chosen crops are cut exactly as when every face is classified
    every = scan_panel(crops_per_face=0)
    some = scan_panel(crops_per_face=2)
    by_place = {(f.frame_index, tuple(round(x) for x in f.box)): f.fake_score for f in every.faces}
    for f in some.faces:
        assert f.fake_score == pytest.approx(by_place[(f.frame_index, tuple(round(x) for x in f.box))], abs=1e-5)


def test_tracks_survive_the_verdict_json_and_older_verdicts_have_none():
    from worker.types import FaceResult, Verdict

    tracks = [{"faces": [0, 1], "frames_seen": 7, "score": 0.8, "counted": True}]
    faces = [FaceResult(0, 0.0, [1, 2, 3, 4], 0.99, 0.7), FaceResult(3, 1.0, [1, 2, 3, 4], 0.98, 0.9)]
    v = Verdict("r", "u", "fake", score=0.8, faces=faces, tracks=tracks)
    back = Verdict.from_dict(v.to_dict())
    assert back.tracks == tracks and back.to_dict() == v.to_dict()
    old = v.to_dict()
    del old["tracks"]  # a verdict written before face tracks (e.g. from the cache)
    assert Verdict.from_dict(old).tracks is None
