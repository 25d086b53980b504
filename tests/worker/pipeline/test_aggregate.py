"""Video-level aggregation: each strategy on score sets whose answer is known by hand."""

import numpy as np
import pytest

from worker.pipeline.aggregate import STRATEGIES, aggregate, frame_scores


def test_mean_max_topk():
    s = [0.1, 0.2, 0.3, 0.9, 0.5, 0.4, 0.6, 0.7]
    assert aggregate(s, "mean") == pytest.approx(np.mean(s))
    assert aggregate(s, "max") == pytest.approx(0.9)
    # 25% of 8 frames = the top 2
    assert aggregate(s, "topk_mean") == pytest.approx((0.9 + 0.7) / 2)
    # at least one frame even for a single score
    assert aggregate([0.42], "topk_mean") == pytest.approx(0.42)


def test_confident_mean_takes_confident_fakes_when_enough_of_them():
    s = [0.95, 0.9, 0.85, 0.92, 0.81, 0.2, 0.3, 0.1, 0.15, 0.05]  # 5 of 10 > 0.8 (more than 10 // 2.5)
    assert aggregate(s, "confident_mean") == pytest.approx(np.mean([0.95, 0.9, 0.85, 0.92, 0.81]))
    # 4 of 10 is not more than 10 // 2.5: falls back to the plain mean
    s[4] = 0.5
    assert aggregate(s, "confident_mean") == pytest.approx(np.mean(s))


def test_confident_mean_ignores_a_few_confident_fakes():
    s = [0.95, 0.3, 0.35, 0.4, 0.3, 0.25, 0.3, 0.4, 0.35, 0.3]  # 1 of 10 > 0.8: not enough
    assert aggregate(s, "confident_mean") == pytest.approx(np.mean(s))


def test_confident_mean_takes_confident_reals():
    s = [0.01] * 19 + [0.5]  # 95% below 0.2
    assert aggregate(s, "confident_mean") == pytest.approx(0.01)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_stays_within_the_scores(strategy):
    s = np.random.default_rng(1).random(10)
    assert s.min() <= aggregate(s, strategy) <= s.max()


@pytest.mark.parametrize("strategy", ["mean", "max", "topk_mean"])
def test_raising_every_score_never_lowers_the_video_score(strategy):
    s = np.random.default_rng(2).random(10)
    assert aggregate(np.minimum(s + 0.05, 1.0), strategy) >= aggregate(s, strategy)


def test_bad_input():
    with pytest.raises(ValueError, match="no frame scores"):
        aggregate([], "mean")
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate([0.5], "median")


def test_frame_scores_takes_max_face_per_frame():
    ids, scores = frame_scores([3, 1, 3, 1, 7], [0.2, 0.9, 0.8, 0.1, 0.5])
    assert ids.tolist() == [1, 3, 7]
    assert scores.tolist() == [0.9, 0.8, 0.5]
