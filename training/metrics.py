"""Frame- and video-level metrics and threshold search, in plain numpy.

Scores are probabilities of "fake" and labels are 1 for fake, 0 for real. The functions
here are checked against scikit-learn in tests/training/test_metrics.py; they are written
out so the threshold search and the report share one definition of every number.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(np.int64).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"{labels.size} labels but {scores.size} scores")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 (real) or 1 (fake)")
    return labels, scores


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) with thresholds descending; a score >= threshold is "fake".

    The first point is (0, 0) at threshold +inf, as in scikit-learn.
    """
    labels, scores = _check(labels, scores)
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    # one point per distinct score: the last index of each run of equal scores
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    pos, neg = max(int(y.sum()), 1), max(int(y.size - y.sum()), 1)
    fpr = np.r_[0.0, fp / neg]
    tpr = np.r_[0.0, tp / pos]
    return fpr, tpr, np.r_[np.inf, s[last]]


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve (NaN when only one class is present)."""
    labels, _ = _check(labels, scores)
    if labels.min(initial=1) == labels.max(initial=0):
        return float("nan")
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(np.trapezoid(tpr, fpr))


def precision_recall_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds), thresholds descending, one point per distinct score."""
    labels, scores = _check(labels, scores)
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tp = np.cumsum(y)[last]
    predicted = last + 1
    precision = tp / predicted
    recall = tp / max(int(y.sum()), 1)
    return precision, recall, s[last]


def average_precision(labels, scores) -> float:
    """AP as scikit-learn defines it: sum over thresholds of (R_n - R_{n-1}) * P_n."""
    labels, _ = _check(labels, scores)
    if labels.sum() == 0:
        return float("nan")
    precision, recall, _ = precision_recall_curve(labels, scores)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def confusion(labels, scores, threshold: float) -> np.ndarray:
    """2x2 confusion matrix [[TN, FP], [FN, TP]] (rows: true real/fake; cols: predicted)."""
    labels, scores = _check(labels, scores)
    pred = scores >= threshold
    tp = int(np.sum(pred & (labels == 1)))
    fp = int(np.sum(pred & (labels == 0)))
    fn = int(np.sum(~pred & (labels == 1)))
    tn = int(np.sum(~pred & (labels == 0)))
    return np.array([[tn, fp], [fn, tp]], dtype=np.int64)


def f1_at(labels, scores, threshold: float) -> float:
    (tn, fp), (fn, tp) = confusion(labels, scores, threshold)
    return 0.0 if tp == 0 else float(2 * tp / (2 * tp + fp + fn))


def eer(labels, scores) -> tuple[float, float]:
    """Equal error rate and the threshold where FPR meets FNR (linear interpolation)."""
    labels, _ = _check(labels, scores)
    if labels.min(initial=1) == labels.max(initial=0):
        return float("nan"), float("nan")
    fpr, tpr, thr = roc_curve(labels, scores)
    fnr = 1.0 - tpr
    diff = fnr - fpr  # decreasing from 1 to -1 along the curve
    i = int(np.nonzero(diff <= 0)[0][0])
    if diff[i] == 0 or i == 0:
        return float(fpr[i]), float(thr[i])
    # crossing between point i-1 and i
    w = diff[i - 1] / (diff[i - 1] - diff[i])
    rate = fpr[i - 1] + w * (fpr[i] - fpr[i - 1])
    t_prev = thr[i - 1] if np.isfinite(thr[i - 1]) else thr[i]
    return float(rate), float(t_prev + w * (thr[i] - t_prev))


@dataclass
class Scores:
    """Every figure the report shows for one score set at one threshold."""

    n: int
    n_fake: int
    auc: float
    ap: float
    eer: float
    threshold: float
    accuracy: float
    precision: float
    recall: float
    f1: float
    fpr: float
    confusion: list[list[int]]

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in asdict(self).items()}


def summarize(labels, scores, threshold: float) -> Scores:
    labels, scores = _check(labels, scores)
    cm = confusion(labels, scores, threshold)
    (tn, fp), (fn, tp) = cm
    n = labels.size
    return Scores(
        n=int(n),
        n_fake=int(labels.sum()),
        auc=roc_auc(labels, scores),
        ap=average_precision(labels, scores),
        eer=eer(labels, scores)[0],
        threshold=float(threshold),
        accuracy=float((tp + tn) / n) if n else float("nan"),
        precision=float(tp / (tp + fp)) if tp + fp else 0.0,
        recall=float(tp / (tp + fn)) if tp + fn else 0.0,
        f1=f1_at(labels, scores, threshold),
        fpr=float(fp / (fp + tn)) if fp + tn else 0.0,
        confusion=cm.tolist(),
    )


# --- threshold search --------------------------------------------------------------------

THRESHOLD_METHODS = ("best_f1", "target_fpr", "target_precision")


def _candidates(scores: np.ndarray) -> np.ndarray:
    """Midpoints between distinct scores, plus one below and one above all of them.

    A midpoint generalises better than a threshold that sits exactly on a training score.
    """
    u = np.unique(scores)
    mids = (u[:-1] + u[1:]) / 2 if u.size > 1 else np.empty(0)
    return np.clip(np.r_[u[0] - 1e-6, mids, u[-1] + 1e-6], 0.0, 1.0)


def best_f1_threshold(labels, scores) -> float:
    """Threshold with the highest F1; ties go to the highest threshold (fewer false alarms)."""
    labels, scores = _check(labels, scores)
    cands = _candidates(scores)
    f1s = np.array([f1_at(labels, scores, t) for t in cands])
    best = np.flatnonzero(f1s == f1s.max())
    return float(cands[best[-1]])


def threshold_for_fpr(labels, scores, target_fpr: float) -> float:
    """Lowest threshold whose false-positive rate on `scores` is <= target_fpr."""
    labels, scores = _check(labels, scores)
    neg = scores[labels == 0]
    if neg.size == 0:
        raise ValueError("target FPR needs real (negative) samples")
    cands = _candidates(scores)
    fprs = np.array([np.mean(neg >= t) for t in cands])
    ok = cands[fprs <= target_fpr]
    return float(ok.min())


def threshold_for_precision(labels, scores, target_precision: float) -> float:
    """Lowest threshold whose precision is >= target (the most recall at that precision).

    Falls back to the best-F1 threshold when no threshold reaches the target.
    """
    labels, scores = _check(labels, scores)
    cands = _candidates(scores)
    ok = []
    for t in cands:
        pred = scores >= t
        if pred.any() and labels[pred].mean() >= target_precision:
            ok.append(t)
    return float(min(ok)) if ok else best_f1_threshold(labels, scores)


def tune_threshold(labels, scores, method: str = "best_f1", target: float | None = None) -> float:
    if method == "best_f1":
        return best_f1_threshold(labels, scores)
    if method == "target_fpr":
        return threshold_for_fpr(labels, scores, 0.01 if target is None else target)
    if method == "target_precision":
        return threshold_for_precision(labels, scores, 0.95 if target is None else target)
    raise ValueError(f"unknown threshold method {method!r}; use one of {', '.join(THRESHOLD_METHODS)}")
