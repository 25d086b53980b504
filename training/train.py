"""`dfd-train train`: fine-tune ConvNextV2ForImageClassification on prepared crops with the HF Trainer.

The base model is a local checkpoint folder, a hub id (only when the hub is reachable), or
a size name (atto ... base) with random initialisation, which works offline. Class balance
comes from loss weights (inverse class frequency); early stopping and checkpoints from the
Trainer. Tracking goes to Weights & Biases when it is installed and configured (an API key
or WANDB_MODE=offline), otherwise to local logs in the output folder. `--hp-trials N` runs
`trainer.hyperparameter_search` with Optuna when it is installed.

The output folder's `model/` is a normal Hugging Face checkpoint plus `dfd_training.json`
(input size, normalisation, base, data), which `evaluate` and `export` read.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

import numpy as np

from training import metrics
from training.augment import Augment
from training.dataset import (
    LABELS,
    CropDataset,
    DataError,
    check_groups,
    check_two_classes,
    data_fingerprint,
    manipulation_of,
    read_metadata,
    read_prepare_info,
    select,
    source_of,
)
from training.untrained_bundle import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SIZES,
    add_input_standardisation,
    build_model,
    restore_input_standardisation,
)

log = logging.getLogger(__name__)

TRAINING_INFO = "dfd_training.json"


def load_base(base: str, seed: int = 0, standardise_input: bool = False):
    """(model, mean, std) for a checkpoint folder, a size name or a hub id. `standardise_input`:
    the model standardises each crop's channels itself (`untrained_bundle.add_input_standardisation`);
    a checkpoint saved with it keeps it either way."""
    from transformers import ConvNextV2ForImageClassification

    id2label = dict(enumerate(LABELS))
    label2id = {v: k for k, v in id2label.items()}
    if base in SIZES:
        return build_model(base, seed, standardise_input), IMAGENET_MEAN, IMAGENET_STD
    path = Path(base)
    if not path.exists() and "/" not in base:
        raise DataError(f"base {base!r} is neither a size ({', '.join(SIZES)}), a checkpoint folder nor a hub id")
    try:
        model = ConvNextV2ForImageClassification.from_pretrained(
            base, num_labels=2, id2label=id2label, label2id=label2id, ignore_mismatched_sizes=True
        )
    except OSError as exc:
        where = "checkpoint folder" if path.exists() else "hub id (is the hub reachable from here?)"
        raise DataError(f"cannot load base model {base!r} as a {where}: {exc}") from exc
    restore_input_standardisation(model)
    if standardise_input:
        add_input_standardisation(model)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    for name in (TRAINING_INFO, "preprocessor_config.json"):
        cfg = path / name
        if cfg.is_file():
            data = json.loads(cfg.read_text())
            mean = tuple(data.get("mean", data.get("image_mean", mean)))
            std = tuple(data.get("std", data.get("image_std", std)))
            break
    return model, mean, std


SELECTION_METRICS = ("auc", "ap", "loss")


def make_compute_metrics(weights: np.ndarray, metric: str = "auc"):
    """The Trainer's `compute_metrics`: AUC, AP, F1, accuracy, the class-weighted loss, and
    `select`, the one number the best checkpoint is chosen by.

    `select` is the chosen metric rounded to 4 places plus a term below 1e-5 that falls as the
    validation loss rises: of two checkpoints with the same AUC (a small validation set reaches
    1.0 early) the one with the lower loss wins, and the Trainer's "first best wins" only
    applies to exact ties of both.
    """
    weights = np.asarray(weights, np.float64)

    def compute_metrics(eval_pred) -> dict[str, float]:
        logits, labels = eval_pred
        logits = np.asarray(logits, np.float64)
        labels = np.asarray(labels).astype(np.int64)
        logits = logits - logits.max(axis=1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        fake = np.exp(log_probs[:, 1])
        w = weights[labels]
        loss = float(-(w * log_probs[np.arange(len(labels)), labels]).sum() / w.sum())
        auc = metrics.roc_auc(labels, fake)
        values = {
            "auc": 0.5 if np.isnan(auc) else auc,
            "ap": metrics.average_precision(labels, fake),
            "f1": metrics.f1_at(labels, fake, 0.5),
            "accuracy": float(np.mean((fake >= 0.5) == labels)),
            "weighted_loss": loss,
        }
        tie_break = 1e-5 / (1.0 + loss)
        values["select"] = -loss if metric == "loss" else round(values[metric], 4) + tie_break
        return values

    return compute_metrics


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature scaling (Guo et al., 2017): the T > 0 minimising the validation NLL of
    softmax(logits / T). It changes no ranking (AUC stays), only how far scores sit from 0.5."""
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels).astype(np.int64)

    def nll(log_t: float) -> float:
        z = logits / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-log_probs[np.arange(len(labels)), labels].mean())

    best = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(best.x))


def apply_temperature(model, temperature: float) -> None:
    """Fold 1/T into the classifier layer, so the saved weights, the ONNX graph and the worker
    all give the calibrated scores with no extra step."""
    import torch

    with torch.no_grad():
        model.classifier.weight /= temperature
        model.classifier.bias /= temperature


FILTER_FIELDS = {"source": source_of, "manipulation": manipulation_of}


def parse_filter(text: str) -> tuple[str, set[str]]:
    """`source=a,b` or `manipulation=face-swap` -> (field, values)."""
    field_, _, values = text.partition("=")
    if field_ not in FILTER_FIELDS or not values:
        raise DataError(f"filter {text!r}: expected FIELD=VALUE[,VALUE...] with FIELD one of {', '.join(FILTER_FIELDS)}")
    return field_, {v.strip() for v in values.split(",") if v.strip()}


def apply_filters(rows: list[dict], only: list[str] = (), exclude: list[str] = ()) -> list[dict]:
    """Rows kept for training and checkpoint choice: a leave-source-out or cross-manipulation run
    names what it holds out (`exclude`) or what it keeps (`only`)."""
    for text in only:
        name, values = parse_filter(text)
        rows = [r for r in rows if FILTER_FIELDS[name](r) in values]
    for text in exclude:
        name, values = parse_filter(text)
        rows = [r for r in rows if FILTER_FIELDS[name](r) not in values]
    return rows


def check_report_to(report_to: list[str]) -> None:
    """A tracker that is asked for but not installed is a clear error, not a traceback mid-run."""
    known = {"wandb": "wandb", "tensorboard": "tensorboard", "mlflow": "mlflow", "comet_ml": "comet_ml",
             "clearml": "clearml", "neptune": "neptune", "dvclive": "dvclive", "trackio": "trackio"}
    for name in report_to:
        if name in ("none", "all"):
            continue
        module = known.get(name)
        if module is None:
            raise DataError(f"--report-to {name!r}: unknown tracker; use one of {', '.join(known)}, or none")
        if importlib.util.find_spec(module) is None:
            raise DataError(f"--report-to {name}: the {module!r} package is not installed "
                            f"(pip install {module}), or pass --report-to none")


def default_report_to() -> list[str]:
    """W&B when installed and configured (an API key, a login, or offline mode), else nothing."""
    if importlib.util.find_spec("wandb") is None:
        return []
    configured = os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") in ("offline", "dryrun") \
        or Path.home().joinpath(".netrc").is_file() and "api.wandb.ai" in Path.home().joinpath(".netrc").read_text()
    return ["wandb"] if configured else []


def class_weights(labels: np.ndarray) -> np.ndarray:
    """Inverse-frequency weights, mean 1: each class contributes equally to the loss."""
    counts = np.bincount(labels, minlength=len(LABELS)).astype(np.float64)
    weights = counts.sum() / (len(LABELS) * np.maximum(counts, 1))
    return weights.astype(np.float32)


def train(
    data: str | Path,
    out: str | Path,
    *,
    base: str = "atto",
    input_size: int | None = None,
    epochs: float = 10,
    max_steps: int = -1,
    batch_size: int = 32,
    learning_rate: float = 5e-4,
    weight_decay: float = 0.05,
    warmup_ratio: float = 0.1,
    eval_steps: int | None = None,
    patience: int = 3,
    seed: int = 0,
    augment: Augment | None = Augment(),
    report_to: list[str] | None = None,
    hp_trials: int = 0,
    workers: int = 0,
    quiet: bool = False,
    metric: str = "auc",
    calibrate: bool = True,
    only: list[str] = (),
    exclude: list[str] = (),
    log_file: str | Path | None = None,
    fresh_blends: bool = True,
    curriculum: float = 1.0,
    standardise_input: bool = False,
) -> Path:
    """Train and save the best model to `out/model`; returns that folder.

    `curriculum` above 1 (with fresh blends): the blends start that much stronger (colour
    changes scaled, always fully blended) and ease linearly to the normal recipe by half-way.
    `standardise_input`: the model standardises each crop's colour channels (mean 0, std 1 over
    the crop) before its first layer, so a global colour cast of a crop is no cue; the exported
    ONNX graph contains the step."""
    import torch
    from transformers import EarlyStoppingCallback, Trainer, TrainingArguments, default_data_collator
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    data, out = Path(data), Path(out)
    if metric not in SELECTION_METRICS:
        raise DataError(f"--metric {metric!r}: one of {', '.join(SELECTION_METRICS)}")
    report_to = default_report_to() if report_to is None else report_to
    check_report_to(report_to)
    rows = read_metadata(data)
    check_groups(rows)
    prep = read_prepare_info(data)
    input_size = input_size or int(prep.get("input_size", 224))
    used = apply_filters(rows, only, exclude)
    train_rows, val_rows = select(used, "train"), select(used, "val")
    check_two_classes(train_rows, "training split")
    if not val_rows:
        raise DataError(f"{data} has no validation crops: give some videos split=val (or a larger --val fraction in prepare)")
    check_two_classes(val_rows, "validation split")

    model, mean, std = load_base(base, seed, standardise_input)
    train_set = CropDataset(data, train_rows, input_size, mean, std, augment, fresh_blends=fresh_blends)
    val_set = CropDataset(data, val_rows, input_size, mean, std, None)
    weights = torch.tensor(class_weights(train_set.labels))

    class BalancedTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            loss = torch.nn.functional.cross_entropy(outputs.logits, labels, weight=weights.to(outputs.logits.device))
            return (loss, outputs) if return_outputs else loss

    strategy = "steps" if eval_steps else "epoch"
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"),
        num_train_epochs=epochs,
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        warmup_steps=warmup_ratio,  # a float below 1 is a fraction of the steps
        lr_scheduler_type="cosine",
        eval_strategy=strategy,
        save_strategy=strategy,
        eval_steps=eval_steps,
        save_steps=eval_steps,
        logging_steps=max(1, eval_steps or 10),
        load_best_model_at_end=True,
        metric_for_best_model="select",
        greater_is_better=True,
        save_total_limit=2,
        report_to=report_to,
        remove_unused_columns=False,
        dataloader_num_workers=workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        seed=seed,
        disable_tqdm=quiet,
    )
    trainer = BalancedTrainer(
        model=None if hp_trials else model,
        model_init=(lambda trial=None: load_base(base, seed, standardise_input)[0]) if hp_trials else None,
        args=args,
        train_dataset=train_set,
        eval_dataset=val_set,
        data_collator=default_data_collator,
        compute_metrics=make_compute_metrics(weights.numpy(), metric),
        callbacks=[EarlyStoppingCallback(early_stopping_patience=patience)],
    )
    if curriculum > 1 and fresh_blends:
        trainer.add_callback(blend_curriculum(train_set, curriculum))
    if log_file is not None:  # the Trainer's log dicts go to a file; the progress bar stays
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(quiet_progress(Path(log_file), disable=quiet))
    search = None
    if hp_trials:
        search = hyperparameter_search(trainer, hp_trials)
        for name, value in search.hyperparameters.items():
            setattr(trainer.args, name, value)
    trainer.train()
    temperature = 1.0
    if calibrate:
        prediction = trainer.predict(val_set)
        temperature = fit_temperature(prediction.predictions, prediction.label_ids)
        apply_temperature(trainer.model, temperature)
    final = trainer.evaluate()

    model_dir = out / "model"
    trainer.save_model(str(model_dir))
    best_step = trainer.state.best_global_step or trainer.state.global_step
    info = {
        "base": base,
        "seed": seed,
        "input_size": input_size,
        "mean": list(mean),
        "std": list(std),
        "labels": list(LABELS),
        "data": str(data.resolve()),
        "crop": {"margin": prep.get("crop_margin"), "align": prep.get("align_faces")},
        "prepare": prep,
        "train_crops": len(train_set),
        "val_crops": len(val_set),
        "filters": {"only": list(only), "exclude": list(exclude)},
        "sources": sorted({source_of(r) for r in train_rows}),
        "manipulations": sorted({manipulation_of(r) for r in train_rows}),
        "data_fingerprint": {"train": data_fingerprint(data, train_rows), "val": data_fingerprint(data, val_rows)},
        "synth": prep.get("synth", []),
        "fresh_blends": fresh_blends,
        "curriculum": curriculum if fresh_blends else 1.0,
        "standardise_input": bool(getattr(trainer.model.config, "dfd_input_standardisation", None)),
        "augment": None if augment is None else augment.__dict__,
        "class_weights": weights.tolist(),
        "selection": {"metric": metric, "tie_break": "lower validation loss" if metric != "loss" else None},
        "temperature": temperature,
        # the saved weights are the best checkpoint's: its step, not the last one trained
        "steps": best_step,
        "epochs_run": trainer.state.epoch,
        "steps_run": trainer.state.global_step,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "val_metrics": {k: float(v) for k, v in final.items() if isinstance(v, (int, float))},
        "hyperparameter_search": None if search is None else {"objective": search.objective, "best": search.hyperparameters},
        "report_to": list(args.report_to),
    }
    (model_dir / TRAINING_INFO).write_text(json.dumps(info, indent=2))
    with open(out / "log_history.jsonl", "w") as f:  # the local log, whether or not W&B ran
        for entry in trainer.state.log_history:
            f.write(json.dumps(entry) + "\n")
    return model_dir


def blend_curriculum(train_set: CropDataset, start: float):
    """A Trainer callback: blend strength `start` at step 0, easing linearly to 1 by half-way.
    The data set is read in this process (no loader workers: `--workers 0`), so it sees the change."""
    from transformers import TrainerCallback

    class BlendCurriculum(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            done = state.global_step / max(1, state.max_steps / 2)
            train_set.blend_strength = max(1.0, start - (start - 1.0) * done)

        def on_train_end(self, args, state, control, **kwargs):
            train_set.blend_strength = 1.0

    return BlendCurriculum()


def quiet_progress(log_file: Path, disable: bool = False):
    """A Trainer callback: one progress bar over the steps, each log dict appended to `log_file`."""
    from tqdm import tqdm
    from transformers import TrainerCallback

    class QuietProgress(TrainerCallback):
        bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            log_file.parent.mkdir(parents=True, exist_ok=True)
            self.bar = tqdm(total=state.max_steps, desc="train", unit="step", disable=disable)

        def on_step_end(self, args, state, control, **kwargs):
            self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            with open(log_file, "a") as f:
                f.write(json.dumps({"step": state.global_step, **(logs or {})}) + "\n")
            if logs and "eval_auc" in logs:
                self.bar.set_postfix(val_auc=f"{logs['eval_auc']:.3f}")

        def on_train_end(self, args, state, control, **kwargs):
            self.bar.close()

    return QuietProgress()


def hyperparameter_search(trainer, n_trials: int):
    if importlib.util.find_spec("optuna") is None:
        raise DataError("--hp-trials needs Optuna, which is optional: pip install 'deepfake-stream[tune]' (or optuna)")

    def space(trial):
        return {
            "learning_rate": trial.suggest_float("learning_rate", 1e-5, 1e-3, log=True),
            "weight_decay": trial.suggest_float("weight_decay", 0.0, 0.1),
            "per_device_train_batch_size": trial.suggest_categorical("per_device_train_batch_size", [16, 32, 64]),
        }

    return trainer.hyperparameter_search(
        direction="maximize", backend="optuna", hp_space=space, n_trials=n_trials,
        compute_objective=lambda m: m["eval_auc"],
    )


def add_arguments(p) -> None:
    p.add_argument("data", type=Path, help="a folder made by `dfd-train prepare` (and `synth`)")
    p.add_argument("out", type=Path, help="output folder: model/, checkpoints/, log_history.jsonl")
    p.add_argument("--base", default="atto", help=f"checkpoint folder, hub id, or a size ({', '.join(SIZES)}) for random init")
    p.add_argument("--input-size", type=int, default=None, help="model input side in pixels (default: the crop size used by prepare)")
    p.add_argument("--epochs", type=float, default=10, help="training epochs (may be fractional)")
    p.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps; -1: run --epochs")
    p.add_argument("--batch-size", type=int, default=32, help="crops per training and evaluation batch")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (AdamW, cosine schedule with warm-up)")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    p.add_argument("--eval-steps", type=int, default=None, help="evaluate and checkpoint every N steps (default: every epoch)")
    p.add_argument("--patience", type=int, default=3, help="early stopping: evaluations without improvement of --metric")
    p.add_argument("--metric", choices=SELECTION_METRICS, default="auc",
                   help="validation metric that picks the kept checkpoint; auc and ap break ties by the lower validation loss")
    p.add_argument("--no-calibrate", action="store_true", help="skip temperature scaling of the scores on validation")
    p.add_argument("--only", action="append", default=[], metavar="FIELD=V[,V]",
                   help="train and choose the checkpoint on these rows only (FIELD: source or manipulation); repeatable")
    p.add_argument("--exclude", action="append", default=[], metavar="FIELD=V[,V]",
                   help="hold these rows out of training and checkpoint choice, e.g. source=carphone; repeatable")
    p.add_argument("--fixed-blends", action="store_true",
                   help="train on the self-blends as synth stored them, instead of blending each anew whenever it is drawn")
    p.add_argument("--curriculum", type=float, default=1.0,
                   help="fresh blends start this many times stronger and ease to normal by half-way; 1: none")
    p.add_argument("--standardise-input", action="store_true",
                   help="the model standardises each crop's colour channels (mean 0, std 1 over the crop) itself, "
                        "so a global colour cast is no cue; the exported model contains the step")
    p.add_argument("--seed", type=int, default=0, help="seed for weights (random init), shuffling and augmentation")
    p.add_argument("--no-augment", action="store_true", help="train on the crops as they are (no augmentation)")
    p.add_argument("--report-to", default=None, help="wandb, tensorboard, none (default: wandb if installed and configured, else none)")
    p.add_argument("--hp-trials", type=int, default=0, help="hyperparameter search trials (Optuna) before the final run; 0: none")
    p.add_argument("--workers", type=int, default=0, help="data loader worker processes; 0: load in the main process")


def run(args) -> int:
    report_to = None if args.report_to is None else ([] if args.report_to == "none" else args.report_to.split(","))
    model_dir = train(
        args.data, args.out, base=args.base, input_size=args.input_size, epochs=args.epochs, max_steps=args.max_steps,
        batch_size=args.batch_size, learning_rate=args.lr, weight_decay=args.weight_decay, eval_steps=args.eval_steps,
        patience=args.patience, seed=args.seed, augment=None if args.no_augment else Augment(),
        report_to=report_to, hp_trials=args.hp_trials, workers=args.workers, metric=args.metric,
        calibrate=not args.no_calibrate, only=args.only, exclude=args.exclude, fresh_blends=not args.fixed_blends,
        curriculum=args.curriculum, standardise_input=args.standardise_input,
    )
    info = json.loads((model_dir / TRAINING_INFO).read_text())
    print(f"saved {model_dir}: the checkpoint of step {info['steps']} (of {info['steps_run']} trained), "
          f"temperature {info['temperature']:.3f}; validation: "
          + ", ".join(f"{k}={v:.4f}" for k, v in info["val_metrics"].items() if k.startswith("eval_") and "per_second" not in k))
    return 0
