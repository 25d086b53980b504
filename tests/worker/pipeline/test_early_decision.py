"""The early-decision bound: exact, so it can never give a label that full scoring would not."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from worker.pipeline.aggregate import STRATEGIES, aggregate, early_label, score_bounds

GRID = np.linspace(0, 1, 11)
# confident_mean's extremes sit just inside its bands: the grid needs those points too
FINE = np.union1d(GRID, [0.2 - 1e-9, 0.8 + 1e-9])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_bounds_hold_for_every_completion_on_a_grid(strategy):
    rng = np.random.default_rng(1)
    for _ in range(40):
        known = rng.random(rng.integers(1, 7))
        unknown = int(rng.integers(1, 4))
        bounds = score_bounds(known, unknown, strategy)
        assert bounds is not None
        low, high = bounds
        scores = [aggregate(np.concatenate([known, rest]), strategy) for rest in itertools.product(FINE, repeat=unknown)]
        assert low <= min(scores) + 1e-6 and max(scores) <= high + 1e-6
        # and they are tight: some completion on the grid reaches them
        assert min(scores) == pytest.approx(low, abs=1e-6) and max(scores) == pytest.approx(high, abs=1e-6)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_an_early_label_is_the_label_of_every_completion(strategy):
    rng = np.random.default_rng(2)
    decided = 0
    for _ in range(300):
        known = np.clip(rng.normal(rng.choice([0.05, 0.95]), 0.1, rng.integers(3, 8)), 0, 1)
        unknown = int(rng.integers(1, 4))
        threshold = float(rng.choice([0.3, 0.5, 0.7]))
        got = early_label(known, unknown, strategy, threshold)
        if got is None:
            continue
        decided += 1
        is_fake, bound = got
        for rest in itertools.product(GRID[::2], repeat=unknown):
            full = aggregate(np.concatenate([known, rest]), strategy)
            assert (full >= threshold) == is_fake
            assert (full >= bound - 1e-6) if is_fake else (full <= bound + 1e-6)
    assert decided > 0  # the bound does decide sometimes, or this test proves nothing


def test_mean_decides_fake_early_only_when_the_rest_cannot_pull_it_down():
    # 6 of 10 frames at 1.0: even four zeros leave a mean of 0.6
    assert early_label([1.0] * 6, 4, "mean", 0.5) == (True, pytest.approx(0.6))
    assert early_label([1.0] * 4, 6, "mean", 0.5) is None
    assert early_label([0.0] * 6, 4, "mean", 0.5) == (False, pytest.approx(0.4))
    assert early_label([0.9], 0, "max", 0.5) == (True, pytest.approx(0.9))


def test_confident_mean_does_not_decide_with_too_many_frames_left():
    assert score_bounds([0.9], 7, "confident_mean") is None
    assert early_label([0.9], 7, "confident_mean", 0.5) is None


# -- in the scanner ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def scanners(untrained_bundle):
    from worker.pipeline.scanner import Scanner
    from worker.settings import Settings

    def make(**kw):
        return Scanner(Settings(model_dir=str(untrained_bundle.path), **kw))

    return make


def _one(scanner, path):
    from worker.types import ScanRequest

    (v,) = scanner.scan([ScanRequest("r", str(path))], extra_roots=[str(path.parent)])
    return v


@pytest.mark.parametrize("aggregation", ["mean", "topk_mean", "confident_mean"])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 1.01])
def test_early_decision_gives_the_label_of_full_scoring(scanners, carphone, aggregation, threshold):
    full = _one(scanners(aggregation=aggregation, threshold=threshold), carphone)
    early = _one(scanners(aggregation=aggregation, threshold=threshold, early_decision=True), carphone)
    assert early.label == full.label
    if early.early_decision is None:  # undecided after the first round: scored like full
        assert early.score == pytest.approx(full.score) and len(early.faces) == len(full.faces)
        return
    assert early.early_decision["frames_scored"] < full.frames_with_faces == early.frames_with_faces
    assert len(early.faces) < len(full.faces)
    if early.early_decision["score_is"] == "lower_bound":
        assert early.label == "fake" and early.score <= full.score + 1e-6 and early.score >= threshold
    else:
        assert early.label == "real" and early.score >= full.score - 1e-6 and early.score < threshold


@pytest.mark.parametrize("crops_per_face", [0, 4])
def test_certain_verdicts_skip_half_the_frames(scanners, carphone, crops_per_face):
    # a threshold of 0 makes every video fake and one above 1 every video real, whatever the
    # scores: the first round (every other chosen frame of the face track) is enough for mean
    for threshold, label in ((0.0, "fake"), (1.01, "real")):
        v = _one(scanners(aggregation="mean", threshold=threshold, early_decision=True, crops_per_face=crops_per_face), carphone)
        assert v.label == label and v.early_decision is not None
        chosen = v.frames_with_faces if crops_per_face == 0 else min(v.frames_with_faces, crops_per_face)
        assert v.early_decision["frames_scored"] == (chosen + 1) // 2
        assert len({f.frame_index for f in v.faces}) == v.early_decision["frames_scored"]
        assert v.to_dict()["early_decision"] == v.early_decision


@pytest.mark.parametrize("crops_per_face", [0, 4])
def test_off_by_default(scanners, carphone, crops_per_face):
    v = _one(scanners(aggregation="mean", threshold=0.0, crops_per_face=crops_per_face), carphone)
    assert v.early_decision is None and v.to_dict()["early_decision"] is None
    chosen = v.frames_with_faces if crops_per_face == 0 else min(v.frames_with_faces, crops_per_face)
    assert len({f.frame_index for f in v.faces}) == chosen
