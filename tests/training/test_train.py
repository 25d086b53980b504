"""Training you can reason about: checkpoint choice, calibration, repeatable seeds, one normalisation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.dataset import CropDataset, load_rgb, read_metadata, select
from training.train import apply_filters, fit_temperature, make_compute_metrics, train


def _logits(p_fake: np.ndarray) -> np.ndarray:
    p = np.clip(p_fake, 1e-6, 1 - 1e-6)
    return np.stack([np.zeros_like(p), np.log(p / (1 - p))], axis=1)


def test_equal_auc_is_broken_by_the_lower_validation_loss():
    labels = np.array([0, 0, 1, 1])
    metric = make_compute_metrics(np.ones(2))
    timid = metric((_logits(np.array([0.49, 0.48, 0.51, 0.52])), labels))  # ranks right, scores all near 0.5
    sure = metric((_logits(np.array([0.1, 0.2, 0.8, 0.9])), labels))  # ranks right, confident
    assert timid["auc"] == sure["auc"] == 1.0
    assert sure["weighted_loss"] < timid["weighted_loss"]
    assert sure["select"] > timid["select"]
    # a better AUC always wins over a lower loss
    worse = metric((_logits(np.array([0.1, 0.6, 0.55, 0.9])), labels))
    assert worse["auc"] < 1.0 and worse["select"] < timid["select"]
    by_loss = make_compute_metrics(np.ones(2), "loss")
    assert by_loss((_logits(np.array([0.1, 0.2, 0.8, 0.9])), labels))["select"] == pytest.approx(-sure["weighted_loss"])


def test_temperature_scaling_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    true_logit = rng.normal(0, 2, 4000)
    labels = (rng.random(4000) < 1 / (1 + np.exp(-true_logit))).astype(int)
    overconfident = np.stack([np.zeros(4000), 3.0 * true_logit], axis=1)  # scores 3x too sharp
    assert fit_temperature(overconfident, labels) == pytest.approx(3.0, rel=0.15)


def test_filters_hold_out_sources_and_manipulations():
    rows = [{"label": "real", "dataset": "a", "manipulation": "real", "origin": "video"},
            {"label": "fake", "dataset": "a", "manipulation": "face-swap", "origin": "synth"},
            {"label": "fake", "dataset": "b", "manipulation": "", "origin": "synth"},  # an old table: self-blend
            {"label": "real", "dataset": "", "manipulation": "", "origin": "video"}]  # no source: default
    assert apply_filters(rows, exclude=["source=a"]) == rows[2:]
    assert apply_filters(rows, exclude=["manipulation=face-swap,self-blend"]) == [rows[0], rows[3]]
    assert apply_filters(rows, only=["source=default,b"]) == rows[2:]


def test_training_normalises_with_the_workers_code(prepared):
    """One normalisation path: a training tensor equals what the worker's FakeClassifier feeds ONNX."""
    import types

    from worker.models.classifier import FakeClassifier
    from worker.settings import Settings

    rows = read_metadata(prepared)[:3]
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    dataset = CropDataset(prepared, rows, 64, mean, std)
    bundle = types.SimpleNamespace(info=None, input_size=64, mean=mean, std=std, model_path="unused")
    session = types.SimpleNamespace(get_inputs=lambda: [types.SimpleNamespace(name="pixel_values")], get_providers=lambda: ["CPU"])
    served = FakeClassifier(bundle, Settings(), session=session).preprocess(np.stack([load_rgb(prepared / r["crop"]) for r in rows]))
    trained = np.stack([dataset[i]["pixel_values"].numpy() for i in range(3)])
    assert np.array_equal(served, trained)


@pytest.mark.slow
def test_the_same_seed_trains_the_same_weights_on_cpu(prepared, tmp_path):
    import torch
    from transformers import ConvNextV2ForImageClassification

    def run(name, seed):
        model_dir = train(prepared, tmp_path / name, max_steps=2, eval_steps=2, batch_size=8, seed=seed, report_to=[], quiet=True)
        return model_dir, ConvNextV2ForImageClassification.from_pretrained(model_dir).state_dict()

    dir_a, a = run("a", 7)
    _, b = run("b", 7)
    _, c = run("c", 8)
    assert all(torch.equal(a[k], b[k]) for k in a)  # augmentation, fresh blends, shuffling and init all seeded
    assert not all(torch.equal(a[k], c[k]) for k in a)
    info = json.loads((dir_a / "dfd_training.json").read_text())
    assert info["seed"] == 7 and info["steps"] == 2 and info["steps_run"] == 2
    train_rows = select(read_metadata(prepared), "train")
    assert info["data_fingerprint"]["train"]["crops"] == len(train_rows)
    assert len(info["data_fingerprint"]["train"]["sha256"]) == 64


def test_fresh_blends_are_drawn_anew_and_stored_ones_are_not(prepared, tmp_path):
    import shutil

    import torch

    from training.synth import synthesize

    folder = tmp_path / "data"
    shutil.copytree(prepared, folder)
    synthesize(folder, progress=False)
    rows = [r for r in read_metadata(folder) if r["manipulation"] == "self-blend"][:2]
    fresh = CropDataset(folder, rows, 64, (0.5,) * 3, (0.25,) * 3, fresh_blends=True)
    stored = CropDataset(folder, rows, 64, (0.5,) * 3, (0.25,) * 3)
    torch.manual_seed(0)
    first, second = fresh[0]["pixel_values"], fresh[0]["pixel_values"]
    assert not torch.equal(first, second)  # a new blend at every draw
    assert torch.equal(stored[0]["pixel_values"], stored[0]["pixel_values"])
    assert not torch.equal(first, stored[0]["pixel_values"])


def test_the_blend_curriculum_starts_strong_and_eases_to_the_normal_recipe_by_half_way(prepared, tmp_path):
    from transformers import TrainerControl, TrainerState

    from training.train import blend_curriculum

    rows = [r for r in read_metadata(prepared) if r["label"] == "real"][:2]
    data = CropDataset(prepared, rows, 64, (0.5,) * 3, (0.25,) * 3, fresh_blends=True)
    callback = blend_curriculum(data, 3.0)
    strengths = []
    for step in (0, 25, 50, 75, 99):
        callback.on_step_begin(None, TrainerState(global_step=step, max_steps=100), TrainerControl())
        strengths.append(data.blend_strength)
    assert strengths == [3.0, 2.0, 1.0, 1.0, 1.0]
    callback.on_train_end(None, TrainerState(global_step=100, max_steps=100), TrainerControl())
    assert data.blend_strength == 1.0


@pytest.mark.slow
def test_trainer_logs_go_to_the_file_and_one_bar_to_the_terminal(prepared, tmp_path, capsys):
    log_file = tmp_path / "train.log"
    train(prepared, tmp_path / "run", max_steps=2, eval_steps=1, batch_size=8, report_to=[], log_file=log_file)
    captured = capsys.readouterr()
    assert "'loss'" not in captured.out + captured.err and "eval_auc" not in captured.out + captured.err
    assert "train: 100%" in captured.err  # the one progress bar
    entries = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert any("eval_auc" in e for e in entries) and all("step" in e for e in entries)
