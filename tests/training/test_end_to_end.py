"""The whole chain on a tiny real data set: prepare -> train -> evaluate -> export -> the worker scans with it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.cli import main
from training.dataset import CropDataset, read_metadata, select
from worker.models.bundle import load_bundle
from worker.pipeline.scanner import Scanner
from worker.settings import Settings
from worker.types import ScanRequest


@pytest.fixture(scope="module")
def chain(prepared, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    assert main(["train", str(prepared), str(run), "--max-steps", "10", "--eval-steps", "5", "--batch-size", "16",
                 "--report-to", "none"]) == 0
    assert main(["evaluate", str(run / "model"), str(prepared), str(run / "report")]) == 0
    assert main(["export", str(run / "model"), str(prepared), str(run / "bundle"), "--evaluation", str(run / "report")]) == 0
    return run


def test_train_saves_a_model_with_its_preprocessing(chain, prepared):
    info = json.loads((chain / "model" / "dfd_training.json").read_text())
    assert info["input_size"] == 64 and info["base"] == "atto" and info["steps_run"] == 10
    # the saved weights are the kept checkpoint's, and the step recorded is that checkpoint's
    assert info["best_checkpoint"].endswith(f"checkpoint-{info['steps']}") and info["steps"] in (5, 10)
    assert info["selection"] == {"metric": "auc", "tie_break": "lower validation loss"}
    assert info["temperature"] > 0 and info["seed"] == 0
    assert info["data_fingerprint"]["train"]["crops"] == info["train_crops"]
    assert info["crop"] == {"margin": Settings().crop_margin, "align": Settings().align_faces}
    history = [json.loads(line) for line in (chain / "log_history.jsonl").read_text().splitlines()]
    assert any("eval_auc" in h for h in history) and any("loss" in h for h in history)


def test_evaluation_report(chain):
    report = json.loads((chain / "report" / "evaluation.json").read_text())
    assert set(report["splits"]) == {"val", "test"}
    test = report["splits"]["test"]
    assert test["frame"]["n"] == 20 and test["video"]["n"] == 2  # 2 clips of 10 sampled frames
    assert sum(map(sum, test["frame"]["confusion"])) == 20
    # blurred, recompressed "fakes" are easy: a few steps already rank them above the real frames
    assert report["splits"]["val"]["frame"]["auc"] >= 0.7
    assert report["threshold"] == report["thresholds"]["video_best_f1"]
    md = (chain / "report" / "report.md").read_text()
    for png in ("roc.png", "pr.png", "hist_frames.png", "hist_videos.png", "tsne_before.png", "tsne_after.png"):
        assert (chain / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png in md


def test_bundle_carries_thresholds_and_crop_settings(chain):
    bundle = load_bundle(chain / "bundle")
    report = json.loads((chain / "report" / "evaluation.json").read_text())
    assert bundle.info.trained and not bundle.info.demo
    assert bundle.threshold == pytest.approx(report["threshold"])
    assert bundle.thresholds == pytest.approx(report["thresholds"])
    assert bundle.input_size == 64 and bundle.crop_margin == Settings().crop_margin
    assert bundle.manifest["training"]["onnx_parity"]["max_abs_prob_diff"] < 1e-4
    assert bundle.metrics["test"]["video"]["n"] == 2
    # the detector and detection settings the crops were made with travel in the bundle
    prep = json.loads((chain / "model" / "dfd_training.json").read_text())["prepare"]
    assert bundle.detector_path.is_file() and bundle.info.detector_sha256
    assert {k: bundle.detection[k] for k in ("detect_long_side", "face_score_threshold", "min_face_px", "max_faces_per_frame")} == {
        k: prep[k] for k in ("detect_long_side", "face_score_threshold", "min_face_px", "max_faces_per_frame")}

    training = bundle.manifest["training"]
    info = json.loads((chain / "model" / "dfd_training.json").read_text())
    assert training["steps"] == info["steps"] and training["steps_run"] == 10
    assert training["seed"] == 0 and training["data_fingerprint"] == info["data_fingerprint"]
    assert training["temperature"] == pytest.approx(info["temperature"])


def test_evaluation_by_source_and_manipulation(chain):
    report = json.loads((chain / "report" / "evaluation.json").read_text())
    # the manifest names no source: one source, "default", whose figures are the whole split's
    for split in ("val", "test"):
        assert set(report["by_source"][split]) == {"default"}
        assert report["by_source"][split]["default"]["frame"] == report["splits"][split]["frame"]
        assert set(report["by_manipulation"][split]) == {"real", "fake"}
        real_only = report["by_manipulation"][split]["real"]["frame"]
        assert real_only["n_fake"] == 0 and real_only["auc"] is None
        assert real_only["fpr"] == report["splits"][split]["frame"]["fpr"]
    md = (chain / "report" / "report.md").read_text()
    assert "## By source" in md and "## By manipulation" in md and "## Source x manipulation" in md


def test_worker_scans_with_the_bundle_and_sees_the_training_crops(chain, prepared, labelled_clips):
    """Serving must score exactly the crops training saw: same frames, same faces, same scores."""
    import torch
    from transformers import ConvNextV2ForImageClassification

    from training.evaluate import score_crops

    bundle = load_bundle(chain / "bundle")
    # every face of every frame (DFD_CROPS_PER_FACE=0): training scored them all
    scanner = Scanner(Settings(model_dir=str(bundle.path), crops_per_face=0), bundle)
    clips = [labelled_clips / "real" / "clip3.mp4", labelled_clips / "fake" / "clip3.mp4"]
    verdicts = scanner.scan([ScanRequest(f"r{i}", str(p)) for i, p in enumerate(clips)], extra_roots=[str(labelled_clips)])
    info = json.loads((chain / "model" / "dfd_training.json").read_text())
    model = ConvNextV2ForImageClassification.from_pretrained(chain / "model")
    rows = select(read_metadata(prepared), "test")
    for clip, verdict in zip(clips, verdicts):
        assert verdict.label in ("real", "fake"), verdict.reason
        assert verdict.model.sha256 == bundle.info.sha256 and verdict.threshold == pytest.approx(bundle.threshold)
        assert 0.0 <= verdict.score <= 1.0
        clip_rows = sorted((r for r in rows if r["source"] == str(clip)), key=lambda r: int(r["frame_index"]))
        torch.manual_seed(0)
        expected, _ = score_crops(model, CropDataset(prepared, clip_rows, info["input_size"], info["mean"], info["std"]))
        served = {f.frame_index: f.fake_score for f in verdict.faces}
        assert sorted(served) == [int(r["frame_index"]) for r in clip_rows]
        got = np.array([served[int(r["frame_index"])] for r in clip_rows])
        # PNG crops are lossless, so the only difference is ONNX Runtime vs torch arithmetic
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_hyperparameter_search_with_optuna(prepared, tmp_path):
    pytest.importorskip("optuna", reason="Optuna is optional (pip install optuna)")
    from training.train import train

    model_dir = train(prepared, tmp_path / "run", max_steps=2, eval_steps=2, batch_size=16, report_to=[], hp_trials=2, quiet=True)
    info = json.loads((model_dir / "dfd_training.json").read_text())
    search = info["hyperparameter_search"]
    assert set(search["best"]) == {"learning_rate", "weight_decay", "per_device_train_batch_size"}
    assert 0.0 <= search["objective"] <= 1.0


def test_thresholds_can_be_tuned_on_part_of_validation(chain, prepared, tmp_path):
    from training.dataset import DataError
    from training.evaluate import evaluate

    everything = json.loads((chain / "report" / "evaluation.json").read_text())
    same = evaluate(chain / "model", prepared, tmp_path / "a", tsne=False, progress=False, tune_on=["source=default"])
    assert same["thresholds"] == pytest.approx(everything["thresholds"]) and same["tuned_on"] == ["source=default"]
    with pytest.raises(DataError, match="--tune-on manipulation=fake: the validation rows it keeps .* lack a class"):
        evaluate(chain / "model", prepared, tmp_path / "b", tsne=False, progress=False, tune_on=["manipulation=fake"])
