"""`dfd-train evaluate`: how good a trained model is, and where its threshold should sit.

Scores every validation and test crop with the torch model, then reports frame- and
video-level AUC, AP, F1, EER, accuracy and confusion matrices. Frames take the highest
score of their faces. A video's score is computed as the worker computes it: its faces are
linked into tracks across frames (`worker.pipeline.tracks`, from the face boxes `prepare`
stored), each track's scores aggregated with `worker.pipeline.aggregate`, and the video takes
the highest of the tracks that count, so a video threshold tuned here means the same thing in
a verdict (with one face, the same as aggregating its frames). The threshold is chosen on
validation (best F1, a target false-positive rate or a target precision) and reported on
test, never tuned on test. Also draws ROC and PR curves, score histograms, a t-SNE of the
pooled embeddings before and after fine-tuning, and the worst mistakes, and links them from
one Markdown report.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np

from training import metrics
from training.dataset import LABELS, CropDataset, DataError, check_two_classes, manipulation_of, read_metadata, select, source_of
from worker.pipeline.aggregate import STRATEGIES, aggregate, frame_scores
from worker.pipeline.tracks import link_tracks, video_score

log = logging.getLogger(__name__)

EVALUATION_FILE = "evaluation.json"


# --- scoring ---------------------------------------------------------------------------------


def score_crops(model, dataset: CropDataset, batch_size: int = 64, desc: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(probability of fake [N], pooled embedding [N, D]) for every crop of the data set.

    `desc`: show a progress bar with this label."""
    import torch
    from tqdm import tqdm

    device = next(model.parameters()).device
    probs, embeddings = [], []
    model.eval()
    starts = range(0, len(dataset), batch_size)
    with torch.no_grad():
        for start in tqdm(starts, desc=desc, unit="batch", disable=desc is None, leave=False):
            x = torch.stack([dataset[i]["pixel_values"] for i in range(start, min(start + batch_size, len(dataset)))]).to(device)
            pooled = model.convnextv2(pixel_values=x).pooler_output
            logits = model.classifier(pooled)
            probs.append(torch.softmax(logits, dim=1)[:, 1].cpu().numpy())
            embeddings.append(pooled.cpu().numpy())
    return np.concatenate(probs).astype(np.float64), np.concatenate(embeddings)


def rows_by_video(rows: list[dict]) -> dict[str, list[int]]:
    """video id -> the positions of its rows."""
    by_video: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_video[row["video"]].append(i)
    return by_video


def video_table(rows: list[dict], scores: np.ndarray) -> dict[str, tuple[int, np.ndarray]]:
    """video id -> (label, per-frame scores), frames scored by their highest face."""
    table = {}
    for video, idx in rows_by_video(rows).items():
        _, per_frame = frame_scores([int(rows[i]["frame_index"]) for i in idx], scores[idx])
        table[video] = (LABELS.index(rows[idx[0]]["label"]), per_frame)
    return table


def frame_level(rows: list[dict], scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, values = [], []
    for label, per_frame in video_table(rows, scores).values():
        labels += [label] * len(per_frame)
        values += list(per_frame)
    return np.array(labels), np.array(values)


def _box(row: dict) -> np.ndarray | None:
    try:
        return np.array([float(row[k]) for k in ("x1", "y1", "x2", "y2")])
    except (KeyError, TypeError, ValueError):  # stills and patches made without a detector
        return None


def track_video_score(rows: list[dict], scores: np.ndarray, strategy: str) -> float | None:
    """One video's score as the worker computes it (the highest counted face track), from its
    crops' rows and scores; None when a row has no face box. Frames are taken in order of their
    index; frames without a face have no row, so a gap the worker would count is not seen here."""
    frames = sorted({int(r["frame_index"]) for r in rows})
    position = {f: t for t, f in enumerate(frames)}
    boxes: list[list[np.ndarray]] = [[] for _ in frames]
    owners: list[list[int]] = [[] for _ in frames]
    for i, row in enumerate(rows):
        box = _box(row)
        if box is None:
            return None
        t = position[int(row["frame_index"])]
        boxes[t].append(box)
        owners[t].append(i)
    tracks = link_tracks(boxes)
    per_track = [[float(scores[owners[t][d]]) for t, d in track.members] for track in tracks]
    return video_score(per_track, [len(track.members) for track in tracks], strategy)[0]


def video_level(rows: list[dict], scores: np.ndarray, strategy: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    table, by_video = video_table(rows, scores), rows_by_video(rows)
    videos = sorted(table)
    values = []
    for v in videos:
        idx = by_video[v]
        tracked = track_video_score([rows[i] for i in idx], scores[idx], strategy)
        values.append(aggregate(table[v][1], strategy) if tracked is None else tracked)
    return np.array([table[v][0] for v in videos]), np.array(values), videos


# --- plots ------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, kind: str) -> None:
    """ROC (kind="roc") or precision-recall (kind="pr") curves, one line per named score set."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (labels, scores) in curves.items():
        if len(set(labels.tolist())) < 2:
            continue
        if kind == "roc":
            fpr, tpr, _ = metrics.roc_curve(labels, scores)
            ax.plot(fpr, tpr, label=f"{name} (AUC {metrics.roc_auc(labels, scores):.3f})")
        else:
            p, r, _ = metrics.precision_recall_curve(labels, scores)
            ax.plot(np.r_[0, r], np.r_[1, p], label=f"{name} (AP {metrics.average_precision(labels, scores):.3f})")
    if kind == "roc":
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title="ROC")
    else:
        ax.set(xlabel="recall", ylabel="precision", title="Precision-recall")
    ax.legend(loc="lower right" if kind == "roc" else "lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_histogram(labels: np.ndarray, scores: np.ndarray, threshold: float, path: Path, title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(0, 1, 41)
    for value, name, colour in ((0, "real", "tab:blue"), (1, "fake", "tab:red")):
        ax.hist(scores[labels == value], bins=bins, alpha=0.6, label=f"{name} ({int(np.sum(labels == value))})", color=colour)
    ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.3f}")
    ax.set(xlabel="fake score", ylabel="count", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tsne(embeddings: np.ndarray, labels: np.ndarray, correct: np.ndarray, path: Path, title: str, seed: int = 0) -> None:
    """2-D t-SNE of pooled embeddings: left coloured by label, right by right/wrong."""
    from sklearn.manifold import TSNE

    plt = _pyplot()
    perplexity = float(min(30, max(2, (len(embeddings) - 1) / 3)))
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(embeddings)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for value, name, colour in ((0, "real", "tab:blue"), (1, "fake", "tab:red")):
        m = labels == value
        axes[0].scatter(xy[m, 0], xy[m, 1], s=8, c=colour, label=name, alpha=0.7)
    for value, name, colour in ((True, "right", "tab:green"), (False, "wrong", "k")):
        m = correct == value
        axes[1].scatter(xy[m, 0], xy[m, 1], s=8 if value else 14, c=colour, label=f"{name} ({int(m.sum())})", alpha=0.7)
    for ax, sub in zip(axes, ("by label", "by decision")):
        ax.set(title=f"{title}: {sub}", xticks=[], yticks=[])
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def mistakes_grid(folder: Path, rows: list[dict], scores: np.ndarray, path: Path, k: int = 16) -> list[dict]:
    """Thumbnails of the k most confident mistakes at 0.5 (fakes scored low, reals scored high)."""
    import cv2

    from training.dataset import load_rgb, save_rgb

    labels = np.array([LABELS.index(r["label"]) for r in rows])
    error = np.where(labels == 1, 1 - scores, scores)  # how far the score is from the truth
    order = [i for i in np.argsort(-error) if error[i] > 0.5][:k]
    worst = [{"crop": rows[i]["crop"], "label": rows[i]["label"], "score": round(float(scores[i]), 4),
              "video": rows[i]["video"][:16], "frame_index": rows[i]["frame_index"]} for i in order]
    if order:
        tiles = []
        for i in order:
            tile = cv2.resize(load_rgb(folder / rows[i]["crop"]), (112, 112))
            colour = (255, 60, 60) if labels[i] == 1 else (60, 120, 255)
            cv2.rectangle(tile, (0, 0), (111, 111), colour, 3)
            cv2.putText(tile, f"{scores[i]:.2f}", (4, 106), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
            tiles.append(tile)
        while len(tiles) % 8:
            tiles.append(np.zeros_like(tiles[0]))
        save_rgb(path, np.vstack([np.hstack(tiles[r : r + 8]) for r in range(0, len(tiles), 8)]))
    return worst


# --- by source and by manipulation ----------------------------------------------------------


def _summaries(rows: list[dict], scores: np.ndarray, frame_threshold: float, threshold: float, aggregation: str) -> dict:
    fl, fs = frame_level(rows, scores)
    vl, vs, _ = video_level(rows, scores, aggregation)
    return {"crops": len(rows), "frame": metrics.summarize(fl, fs, frame_threshold).to_dict(),
            "video": metrics.summarize(vl, vs, threshold).to_dict()}


def breakdown(rows: list[dict], scores: np.ndarray, frame_threshold: float, threshold: float, aggregation: str):
    """Every metric per source and per manipulation, as in DeepfakeBench's cross-data-set tables.

    A source's figures take its real faces and the fakes made from them (a pseudo-fake keeps
    its parent's source, a face swap its target's). A manipulation's figures take all real
    faces of the split against that manipulation's fakes; for `real` itself only the false
    alarms mean anything (AUC needs both classes and is left empty).
    """
    by_source, by_manipulation, cross = {}, {}, {}
    sources = np.array([source_of(r) for r in rows])
    manipulations = np.array([manipulation_of(r) for r in rows])
    real = np.array([r["label"] == "real" for r in rows])

    def summary(mask):
        idx = np.flatnonzero(mask)
        return _summaries([rows[i] for i in idx], scores[idx], frame_threshold, threshold, aggregation)

    kinds = sorted(set(manipulations.tolist()), key=lambda m: (m != "real", m))
    for value in sorted(set(sources.tolist())):
        by_source[value] = summary(sources == value)
        # the cross table: this source's real faces against each kind of fake made from them
        cross[value] = {m: summary((sources == value) & (real | (manipulations == m)))
                        for m in kinds if m != "real" and np.any((sources == value) & (manipulations == m))}
    for value in kinds:
        by_manipulation[value] = summary(real | (manipulations == value))
    return by_source, by_manipulation, cross


# --- the evaluation ---------------------------------------------------------------------------


def evaluate(
    model_dir: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    method: str = "best_f1",
    target: float | None = None,
    aggregation: str = "mean",
    tsne: bool = True,
    tsne_max: int = 1500,
    batch_size: int = 64,
    progress: bool = True,
    tune_on: list[str] = (),
) -> dict:
    """Evaluate, write plots + report.md + evaluation.json into `out`, return the summary."""
    import torch
    from training.train import TRAINING_INFO, load_base
    from training.untrained_bundle import load_trained

    model_dir, data, out = Path(model_dir), Path(data), Path(out)
    if aggregation not in STRATEGIES:
        raise DataError(f"unknown aggregation {aggregation!r}: one of {', '.join(STRATEGIES)}")
    if not (model_dir / TRAINING_INFO).is_file():
        raise DataError(f"{model_dir} is not a model saved by `dfd-train train` (no {TRAINING_INFO})")
    info = json.loads((model_dir / TRAINING_INFO).read_text())
    out.mkdir(parents=True, exist_ok=True)
    rows = read_metadata(data)
    val_rows, test_rows = select(rows, "val"), select(rows, "test")
    check_two_classes(val_rows, "validation split")
    has_test = bool(test_rows) and len({r["label"] for r in test_rows}) == 2
    if not has_test:
        log.warning("no test split with both classes: figures below are on validation only")

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_trained(model_dir).to(device)
    size, mean, std = info["input_size"], info["mean"], info["std"]
    sets = {"val": val_rows} | ({"test": test_rows} if has_test else {})
    scored = {name: score_crops(model, CropDataset(data, r, size, mean, std), batch_size, f"score {name}" if progress else None)
              for name, r in sets.items()}

    # thresholds: chosen on validation (or the part of it `tune_on` names, e.g. a source never
    # trained on), at both levels, by every method (the bundle keeps all)
    from training.train import apply_filters

    kept = {id(r) for r in apply_filters(val_rows, tune_on)}
    tune_idx = [i for i, r in enumerate(val_rows) if id(r) in kept]
    tune_rows = [val_rows[i] for i in tune_idx]
    if tune_on and len({r["label"] for r in tune_rows}) < 2:
        raise DataError(f"--tune-on {' '.join(tune_on)}: the validation rows it keeps ({len(tune_rows)}) lack a class")
    val_scores = scored["val"][0][list(tune_idx)]
    fl_val, fs_val = frame_level(tune_rows, val_scores)
    vl_val, vs_val, _ = video_level(tune_rows, val_scores, aggregation)
    thresholds = {}
    for level, (lab, sc) in (("frame", (fl_val, fs_val)), ("video", (vl_val, vs_val))):
        for m, t in (("best_f1", None), ("target_fpr", target if method == "target_fpr" else None),
                     ("target_precision", target if method == "target_precision" else None)):
            if len(set(lab.tolist())) == 2:
                thresholds[f"{level}_{m}"] = metrics.tune_threshold(lab, sc, m, t)
    if f"video_{method}" not in thresholds:
        raise DataError(f"validation has too few videos of each class to tune a video threshold ({len(vl_val)} videos)")
    threshold = thresholds[f"video_{method}"]
    frame_threshold = thresholds.get(f"frame_{method}", 0.5)

    report = {"method": method, "target": target, "tuned_on": list(tune_on) or "validation", "aggregation": aggregation,
              "threshold": threshold,
              "frame_threshold": frame_threshold, "thresholds": thresholds, "splits": {}, "aggregations": {},
              "by_source": {}, "by_manipulation": {}, "by_source_manipulation": {}}
    curves_frame, curves_video = {}, {}
    for name, split_rows in sets.items():
        scores = scored[name][0]
        fl, fs = frame_level(split_rows, scores)
        vl, vs, _ = video_level(split_rows, scores, aggregation)
        report["splits"][name] = {
            "crops": len(split_rows),
            "frame": metrics.summarize(fl, fs, frame_threshold).to_dict(),
            "video": metrics.summarize(vl, vs, threshold).to_dict(),
            "frame_at_0.5": metrics.summarize(fl, fs, 0.5).to_dict(),
        }
        curves_frame[f"{name} frames"] = (fl, fs)
        curves_video[f"{name} videos"] = (vl, vs)
        report["aggregations"][name] = {s: metrics.roc_auc(*video_level(split_rows, scores, s)[:2]) for s in STRATEGIES}
        report["by_source"][name], report["by_manipulation"][name], report["by_source_manipulation"][name] = breakdown(
            split_rows, scores, frame_threshold, threshold, aggregation)

    final = "test" if has_test else "val"
    plot_curves(curves_frame | curves_video, out / "roc.png", "roc")
    plot_curves(curves_frame | curves_video, out / "pr.png", "pr")
    plot_histogram(*curves_frame[f"{final} frames"], frame_threshold, out / "hist_frames.png", f"{final}: frame scores")
    plot_histogram(*curves_video[f"{final} videos"], threshold, out / "hist_videos.png", f"{final}: video scores ({aggregation})")
    final_rows, (final_scores, final_emb) = sets[final], scored[final]
    report["mistakes"] = mistakes_grid(data, final_rows, final_scores, out / "mistakes.png")

    if tsne and len(final_rows) >= 5:
        pick = np.random.default_rng(0).permutation(len(final_rows))[:tsne_max]
        labels = np.array([LABELS.index(final_rows[i]["label"]) for i in pick])
        ds = CropDataset(data, [final_rows[i] for i in pick], size, mean, std)
        base_model, _, _ = load_base(info["base"], info.get("seed", 0), bool(info.get("standardise_input")))
        base_scores, base_emb = score_crops(base_model.to(device), ds, batch_size, "score base model" if progress else None)
        log.info("t-SNE of %d crops, before and after fine-tuning", len(pick))
        plot_tsne(base_emb, labels, (base_scores >= 0.5) == labels, out / "tsne_before.png", f"before ({info['base']})")
        plot_tsne(final_emb[pick], labels, (final_scores[pick] >= frame_threshold) == labels, out / "tsne_after.png", "after fine-tuning")
        report["tsne"] = {"crops": int(len(pick)), "before": "tsne_before.png", "after": "tsne_after.png"}

    report["model"] = {"dir": str(model_dir), "base": info["base"], "input_size": size,
                       "steps": info.get("steps", info.get("steps_run")), "temperature": info.get("temperature", 1.0),
                       "trained_on": {"sources": info.get("sources"), "manipulations": info.get("manipulations"),
                                      "filters": info.get("filters")}}
    (out / EVALUATION_FILE).write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(markdown_report(report, final))
    return report


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def markdown_report(r: dict, final: str) -> str:
    lines = [
        "# Evaluation report", "",
        f"Model `{r['model']['dir']}` (base `{r['model']['base']}`, input {r['model']['input_size']} px, "
        f"{r['model']['steps']} steps). Video score: the highest of its face tracks' `{r['aggregation']}` scores "
        f"(with one face: the `{r['aggregation']}` of its frames), as the worker computes it; frame figures score a frame "
        "by its most suspicious face.", "",
        f"Thresholds were tuned on **validation** by `{r['method']}`"
        + (f" (target {r['target']})" if r["target"] is not None else "")
        + f" and are reported on **{final}**: video threshold **{r['threshold']:.4f}**, frame threshold {r['frame_threshold']:.4f}.", "",
        "| split | level | n (fake) | AUC | AP | EER | accuracy | precision | recall | F1 | FPR | confusion [[TN,FP],[FN,TP]] |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for split, s in r["splits"].items():
        for level in ("frame", "video"):
            m = s[level]
            lines.append(
                f"| {split} | {level} | {m['n']} ({m['n_fake']}) | {_fmt(m['auc'])} | {_fmt(m['ap'])} | {_fmt(m['eer'])} | "
                f"{_fmt(m['accuracy'])} | {_fmt(m['precision'])} | {_fmt(m['recall'])} | {_fmt(m['f1'])} | {_fmt(m['fpr'])} | {m['confusion']} |"
            )
    for key, title, what in (("by_source", "By source", "source"), ("by_manipulation", "By manipulation", "manipulation")):
        lines += ["", f"## {title}", "",
                  "Each " + what + ("'s real faces and the fakes made from them" if what == "source" else
                                    ": all real faces of the split against its fakes (`real`: the real faces alone, "
                                    "so only the false-positive rate applies)") + f", at the thresholds above.", "",
                  f"| split | {what} | level | n (fake) | AUC | AP | EER | accuracy | recall | FPR |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for split, table in r.get(key, {}).items():
            for value, s in table.items():
                for level in ("frame", "video"):
                    m = s[level]
                    lines.append(f"| {split} | {value} | {level} | {m['n']} ({m['n_fake']}) | {_fmt(m['auc'])} | {_fmt(m['ap'])} | "
                                 f"{_fmt(m['eer'])} | {_fmt(m['accuracy'])} | {_fmt(m['recall'])} | {_fmt(m['fpr'])} |")
    lines += ["", "## Source x manipulation", "",
              "Each source's real faces against each kind of fake made from them: AUC frame / video, and at the "
              "thresholds the share of those fakes found (recall).", "",
              "| split | source | manipulation | n frames (fake) | AUC frame | AUC video | recall frame | recall video |",
              "|---|---|---|---|---|---|---|---|"]
    for split, table in r.get("by_source_manipulation", {}).items():
        for source, kinds in table.items():
            for kind, m in kinds.items():
                lines.append(f"| {split} | {source} | {kind} | {m['frame']['n']} ({m['frame']['n_fake']}) | {_fmt(m['frame']['auc'])} | "
                             f"{_fmt(m['video']['auc'])} | {_fmt(m['frame']['recall'])} | {_fmt(m['video']['recall'])} |")
    lines += ["", "## Thresholds chosen on validation", "", "| name | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in r["thresholds"].items()]
    lines += ["", "## Video AUC by aggregation strategy", "", "| split | " + " | ".join(STRATEGIES) + " |",
              "|---|" + "---|" * len(STRATEGIES)]
    lines += [f"| {s} | " + " | ".join(_fmt(v) for v in a.values()) + " |" for s, a in r["aggregations"].items()]
    lines += ["", "## Curves and distributions", "", "![ROC](roc.png) ![PR](pr.png)", "",
              "![frame scores](hist_frames.png)", "", "![video scores](hist_videos.png)", ""]
    if "tsne" in r:
        lines += ["## t-SNE of pooled embeddings", "",
                  f"{r['tsne']['crops']} {final} crops; left: by label, right: right or wrong at the threshold.", "",
                  "Before fine-tuning:", "", "![t-SNE before](tsne_before.png)", "",
                  "After fine-tuning:", "", "![t-SNE after](tsne_after.png)", ""]
    lines += ["## Worst mistakes", ""]
    if r["mistakes"]:
        lines += ["Most confident wrong answers at 0.5 (red frame: fake, blue: real; the number is the fake score).", "",
                  "![mistakes](mistakes.png)", "", "| crop | label | score | video | frame |", "|---|---|---|---|---|"]
        lines += [f"| {m['crop']} | {m['label']} | {m['score']} | {m['video']} | {m['frame_index']} |" for m in r["mistakes"]]
    else:
        lines.append("No crop is on the wrong side of 0.5.")
    return "\n".join(lines) + "\n"


def add_arguments(p) -> None:
    p.add_argument("model", type=Path, help="the model folder written by `dfd-train train` (RUN/model)")
    p.add_argument("data", type=Path, help="the prepared data folder")
    p.add_argument("out", type=Path, help="report folder (report.md, evaluation.json, PNGs)")
    p.add_argument("--method", choices=metrics.THRESHOLD_METHODS, default="best_f1",
                   help="how the threshold is chosen on validation: the best F1, a target false-positive rate or a target precision")
    p.add_argument("--target", type=float, default=None, help="target FPR (default 0.01) or precision (default 0.95)")
    p.add_argument("--aggregation", choices=STRATEGIES, default="mean", help="frames -> video score, as the worker does")
    p.add_argument("--tune-on", action="append", default=[], metavar="FIELD=V[,V]",
                   help="tune the thresholds on these validation rows only (FIELD: source or manipulation), "
                        "e.g. source=carphone for a source the model never trained on; repeatable")
    p.add_argument("--no-tsne", action="store_true", help="skip the t-SNE plots (they score every crop twice more)")


def run(args) -> int:
    r = evaluate(args.model, args.data, args.out, method=args.method, target=args.target,
                 aggregation=args.aggregation, tsne=not args.no_tsne, tune_on=args.tune_on)
    final = "test" if "test" in r["splits"] else "val"
    v = r["splits"][final]["video"]
    print(f"{final}: video AUC {_fmt(v['auc'])}, F1 {_fmt(v['f1'])} at threshold {r['threshold']:.4f} "
          f"(tuned on validation by {r['method']}); report: {args.out / 'report.md'}")
    return 0
