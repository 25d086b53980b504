"""training.metrics against scikit-learn, and threshold searches whose answer is known."""

import numpy as np
import pytest
from sklearn import metrics as skm

from training import metrics


@pytest.fixture
def scored():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 400)
    # overlapping classes, with ties (rounded scores) to exercise the tie handling
    scores = np.round(np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1), 2)
    return labels, scores


def test_auc_and_ap_match_sklearn(scored):
    labels, scores = scored
    assert metrics.roc_auc(labels, scores) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
    assert metrics.average_precision(labels, scores) == pytest.approx(
        skm.average_precision_score(labels, scores), abs=1e-12
    )


def test_roc_curve_matches_sklearn(scored):
    labels, scores = scored
    fpr, tpr, thr = metrics.roc_curve(labels, scores)
    sk_fpr, sk_tpr, sk_thr = skm.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thr[1:], sk_thr[1:])


def test_confusion_f1_accuracy_match_sklearn(scored):
    labels, scores = scored
    pred = (scores >= 0.5).astype(int)
    np.testing.assert_array_equal(metrics.confusion(labels, scores, 0.5), skm.confusion_matrix(labels, pred))
    s = metrics.summarize(labels, scores, 0.5)
    assert s.f1 == pytest.approx(skm.f1_score(labels, pred))
    assert s.accuracy == pytest.approx(skm.accuracy_score(labels, pred))
    assert s.precision == pytest.approx(skm.precision_score(labels, pred))
    assert s.recall == pytest.approx(skm.recall_score(labels, pred))


def test_eer_known_answer():
    # reals 0.0..0.9, fakes 0.3..1.2 (scaled): at t=0.65 exactly 3/10 of each side err
    reals = np.arange(10) / 10
    fakes = reals + 0.35
    labels = np.r_[np.zeros(10), np.ones(10)]
    rate, thr = metrics.eer(labels, np.r_[reals, fakes] / 1.35)
    assert rate == pytest.approx(0.3, abs=0.05)
    assert 0.6 / 1.35 <= thr <= 0.7 / 1.35


def test_eer_perfect_separation_is_zero():
    labels = np.r_[np.zeros(5), np.ones(5)]
    rate, _ = metrics.eer(labels, np.r_[np.linspace(0, 0.4, 5), np.linspace(0.6, 1, 5)])
    assert rate == 0.0


def test_best_f1_threshold_separates_separable_sets():
    labels = np.r_[np.zeros(50), np.ones(50)]
    scores = np.r_[np.linspace(0.05, 0.30, 50), np.linspace(0.70, 0.95, 50)]
    t = metrics.best_f1_threshold(labels, scores)
    assert 0.30 < t <= 0.70
    assert metrics.f1_at(labels, scores, t) == 1.0


def test_best_f1_threshold_known_optimum():
    # one fake scored low (0.2) and one real scored high (0.8): the best F1 keeps 0.5..0.8 as fake
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 0])
    scores = np.array([0.1, 0.15, 0.3, 0.35, 0.2, 0.6, 0.7, 0.9, 0.95, 0.8])
    t = metrics.best_f1_threshold(labels, scores)
    assert 0.35 < t <= 0.6
    # brute force over a fine grid agrees
    grid = np.linspace(0, 1, 1001)
    assert metrics.f1_at(labels, scores, t) == pytest.approx(max(metrics.f1_at(labels, scores, g) for g in grid))


def test_threshold_for_fpr_and_precision():
    reals = np.linspace(0.0, 0.99, 100)  # FPR at threshold t is about 1 - t
    fakes = np.full(20, 0.995)
    labels = np.r_[np.zeros(100), np.ones(20)]
    scores = np.r_[reals, fakes]
    t = metrics.threshold_for_fpr(labels, scores, 0.05)
    assert np.mean(reals >= t) <= 0.05
    assert np.mean(reals >= t - 0.011) > 0.05  # and it is the lowest such threshold
    t = metrics.threshold_for_precision(labels, scores, 0.8)
    pred = scores >= t
    assert labels[pred].mean() >= 0.8
    assert labels[scores >= t - 0.011].mean() < 0.8


def test_bad_inputs_are_clear():
    with pytest.raises(ValueError, match="labels but"):
        metrics.roc_auc([0, 1], [0.5])
    with pytest.raises(ValueError, match="0 \\(real\\) or 1"):
        metrics.roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="unknown threshold method"):
        metrics.tune_threshold([0, 1], [0.1, 0.9], "median")
    assert np.isnan(metrics.roc_auc([1, 1], [0.1, 0.9]))


def test_breakdown_by_source_and_manipulation_takes_the_right_rows():
    from training.evaluate import breakdown

    def row(i, label, source, manipulation):
        return {"crop": f"c{i}", "video": f"v{i}", "frame_index": "0", "label": label, "dataset": source,
                "manipulation": manipulation, "origin": "video" if label == "real" else "synth"}

    rows = [row(0, "real", "a", "real"), row(1, "real", "a", "real"), row(2, "real", "b", "real"),
            row(3, "fake", "a", "self-blend"), row(4, "fake", "a", "face-swap"), row(5, "fake", "b", "self-blend")]
    scores = np.array([0.1, 0.7, 0.2, 0.9, 0.6, 0.8])
    by_source, by_manipulation, cross = breakdown(rows, scores, 0.5, 0.5, "mean")
    assert set(by_source) == {"a", "b"} and list(by_manipulation) == ["real", "face-swap", "self-blend"]
    a = by_source["a"]["frame"]
    assert (a["n"], a["n_fake"]) == (4, 2) and a["fpr"] == 0.5  # real 0.7 of source a is a false alarm
    assert a["auc"] == pytest.approx(metrics.roc_auc([0, 0, 1, 1], [0.1, 0.7, 0.9, 0.6]))
    swap = by_manipulation["face-swap"]["frame"]
    assert (swap["n"], swap["n_fake"]) == (4, 1)  # all three reals against the one face swap
    assert by_manipulation["real"]["frame"]["auc"] is None and by_manipulation["real"]["frame"]["fpr"] == pytest.approx(1 / 3)
    assert set(cross["a"]) == {"self-blend", "face-swap"} and set(cross["b"]) == {"self-blend"}
    assert cross["a"]["face-swap"]["frame"]["auc"] == pytest.approx(0.5)  # 0.6 sits between the reals 0.1 and 0.7


def test_a_video_scores_as_the_worker_scores_it_its_most_suspicious_face_track():
    """Two people side by side in three frames: A scores 0.9, 0.1, 0.1 and B 0.1, 0.8, 0.1. Per
    frame the highest face gives 0.9, 0.8, 0.1 (mean 0.6); the worker links faces into tracks and
    takes the highest track's mean, A's 0.367. Evaluation must say what a verdict will say."""
    from training.evaluate import video_level
    from worker.pipeline.tracks import link_tracks, video_score

    def row(frame, x, label="fake", video="v"):
        return {"crop": f"{video}-{frame}-{x}", "video": video, "frame_index": str(frame), "label": label,
                "x1": str(x), "y1": "100", "x2": str(x + 80), "y2": "180"}

    rows = [row(f, x) for f in range(3) for x in (100, 400)]
    scores = np.array([0.9, 0.1, 0.1, 0.8, 0.1, 0.1])
    _, values, videos = video_level(rows, scores, "mean")
    assert videos == ["v"] and values[0] == pytest.approx((0.9 + 0.1 + 0.1) / 3)
    boxes = [[[100, 100, 180, 180], [400, 100, 480, 180]]] * 3
    tracks = link_tracks(boxes)
    worker = video_score([[scores[2 * t + d] for t, d in tr.members] for tr in tracks], [3, 3], "mean")[0]
    assert values[0] == pytest.approx(worker)
    # one face per frame: exactly the aggregate of its frames; rows without boxes: per frame, as before
    one = [row(f, 100, video="w") for f in range(3)]
    assert video_level(one, np.array([0.2, 0.5, 0.8]), "max")[1][0] == pytest.approx(0.8)
    still = [{k: v for k, v in r.items() if k not in ("x1", "y1", "x2", "y2")} for r in rows]
    assert video_level(still, scores, "mean")[1][0] == pytest.approx(0.6)
